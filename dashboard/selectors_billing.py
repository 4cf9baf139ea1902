"""Reads for the money pages: lots, purchases and receipts, cards, auto-reload, plans.
Every read is scoped to the signed-in customer's account."""

from dataclasses import dataclass
from datetime import datetime, timedelta
from uuid import UUID

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db.models import Prefetch, Q
from django.http import Http404

from billing import selectors
from billing.models import Card, CreditLot, Payment, Plan, Purchase, Reversal
from ratelimits.models import Tier

EXPIRING_SOON = timedelta(days=7)


def payments_configured() -> bool:
    return bool(settings.STRIPE_SECRET_KEY)


def stripe_js_url() -> str:
    """Stripe.js, or the local Stripe stand-in's copy of it when payments go there."""
    if settings.STRIPE_API_BASE:
        return f"{settings.STRIPE_API_BASE.rstrip('/')}/js.stripe.com/v3/"
    return "https://js.stripe.com/v3/"


@dataclass(frozen=True)
class LotRow:
    lot: CreditLot
    live: bool
    expiring_soon: bool
    days_left: int


def account_lot_rows(*, account_id, now: datetime, history_days: int = 28) -> list[LotRow]:
    """Lots that can still be spent (soonest expiry first), then those that expired or
    were used up recently."""
    since = now - timedelta(days=history_days)
    lots = (CreditLot.objects.filter(account_id=account_id)
            .filter(Q(expires_at__gt=now) | Q(expires_at__gte=since))
            .select_related("purchase").order_by("expires_at", "id"))
    rows = []
    for lot in lots:
        live = lot.expires_at > now and lot.remaining_nanos > 0
        left = lot.expires_at - now
        rows.append(LotRow(lot=lot, live=live, days_left=max(left.days, 0),
                           expiring_soon=live and left <= EXPIRING_SOON))
    rows.sort(key=lambda row: (not row.live, row.lot.expires_at if row.live
                               else -row.lot.expires_at.timestamp()))
    return rows


def account_purchases_query(*, account_id):
    """Purchases, newest first, with what a history row and a receipt show."""
    return (Purchase.objects.filter(account_id=account_id)
            .select_related("lot", "payment", "payment__card")
            .prefetch_related(Prefetch("reversals",
                                       queryset=Reversal.objects.order_by("created_at")))
            .order_by("-purchased_at", "-id"))


def account_purchase_get(*, account_id, purchase_id) -> Purchase:
    try:
        return account_purchases_query(account_id=account_id).get(id=purchase_id)
    except (Purchase.DoesNotExist, ValidationError, ValueError):
        raise Http404("No such purchase") from None


def account_card_get(*, account_id, card_id: UUID) -> Card:
    card = Card.objects.filter(id=card_id, account_id=account_id,
                               removed_at__isnull=True).first()
    if card is None:
        raise Http404("No such card")
    return card


def account_payment_get(*, account_id, payment_id: UUID) -> Payment:
    payment = Payment.objects.filter(id=payment_id, account_id=account_id).first()
    if payment is None:
        raise Http404("No such payment")
    return payment


def account_cards(*, account_id) -> list[Card]:
    return selectors.account_cards(account_id=account_id)


def default_card_id(*, account_id):
    return selectors.billing_profile_get(account_id=account_id).default_card_id


def plans() -> list[Plan]:
    return list(Plan.objects.order_by("monthly_price_nanos", "code"))


def next_tier(*, purchased_nanos: int) -> Tier | None:
    return (Tier.objects.filter(min_purchased_nanos__gt=purchased_nanos)
            .order_by("min_purchased_nanos").first())
