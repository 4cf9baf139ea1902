"""Stripe customers and saved cards."""


import time
from datetime import datetime
from uuid import UUID

from django.db import transaction
from django.utils import timezone

from accounts.models import Account
from billing.errors import CardNotFound, CardNotSaved, provider_error
from billing.locks import billing_profile_lock
from billing.models import BillingProfile, Card
from billing.stripe_gateway import (
    CardDeclined,
    CardDetails,
    SetupIntentState,
    StripeGatewayError,
    StripeRequestFailed,
    stripe_gateway,
)
from config.lookups import get_or_raise

# --- Customers and cards ----------------------------------------------------------------


def stripe_customer_ensure(*, account_id: UUID, now: datetime | None = None) -> str:
    """The account's Stripe customer, created the first time it is needed. Concurrent
    first calls wait on the profile lock, so one customer is created; the idempotency key
    covers a retried call."""
    existing = (BillingProfile.objects.filter(account_id=account_id)
                .values_list("stripe_customer_id", flat=True).first())
    if existing:
        return existing
    now = now or timezone.now()
    with transaction.atomic():
        profile = billing_profile_lock(account_id=account_id)
        if profile.stripe_customer_id:
            return profile.stripe_customer_id
        email = Account.objects.select_related("user").get(id=account_id).user.email
        try:
            customer_id = stripe_gateway().customer_create(
                email=email, metadata={"account_id": str(account_id)},
                idempotency_key=f"customer:{account_id}")
        except StripeGatewayError as exc:
            raise provider_error(exc) from exc
        BillingProfile.objects.filter(account_id=account_id).update(
            stripe_customer_id=customer_id, updated_at=now)
        return customer_id


def account_for_stripe_customer(customer_id: str | None) -> UUID | None:
    if not customer_id:
        return None
    return (BillingProfile.objects.filter(stripe_customer_id=customer_id)
            .values_list("account_id", flat=True).first())


def card_setup_start(*, account_id: UUID) -> SetupIntentState:
    """Start saving a card: a SetupIntent the customer's browser confirms with Stripe.js."""
    customer_id = stripe_customer_ensure(account_id=account_id)
    try:
        return stripe_gateway().setup_intent_create(
            customer_id=customer_id, metadata={"account_id": str(account_id)},
            idempotency_key=f"setup:{account_id}:{time.time_ns()}")
    except StripeGatewayError as exc:
        raise provider_error(exc) from exc


def card_save(*, account_id: UUID, setup_intent_id: str,
              now: datetime | None = None) -> Card:
    """Save the card of a succeeded SetupIntent of this account's customer."""
    now = now or timezone.now()
    customer_id = stripe_customer_ensure(account_id=account_id)
    gateway = stripe_gateway()
    try:
        setup = gateway.setup_intent_retrieve(setup_intent_id)
    except StripeRequestFailed:
        raise CardNotSaved("No such setup intent.") from None
    except StripeGatewayError as exc:
        raise provider_error(exc) from exc
    if setup.customer_id != customer_id:
        raise CardNotSaved("No such setup intent.")
    if setup.status != "succeeded" or not setup.payment_method_id:
        raise CardNotSaved(f"The card was not set up (setup intent status: {setup.status}).")
    try:
        details = gateway.payment_method_retrieve(setup.payment_method_id)
        if details.customer_id is None:
            # Stripe attaches the card when the SetupIntent succeeds; the local test server
            # does not, and attaching an attached card to its own customer is harmless.
            details = gateway.payment_method_attach(
                payment_method_id=details.payment_method_id, customer_id=customer_id)
    except CardDeclined as exc:
        raise CardNotSaved(exc.message, extra={"reason": exc.code}) from exc
    except StripeGatewayError as exc:
        raise provider_error(exc) from exc
    if details.customer_id != customer_id:
        raise CardNotSaved("The card belongs to another customer.")
    card = card_record(account_id=account_id, details=details, now=now)
    if card.removed_at is not None:
        raise CardNotSaved("This card was removed; set it up again to save it.")
    return card


def card_record(*, account_id: UUID, details: CardDetails, now: datetime) -> Card:
    """Record a card attached to the account's customer, once (by its PaymentMethod id).
    The account's first card becomes its default. A card removed earlier stays removed."""
    with transaction.atomic():
        profile = billing_profile_lock(account_id=account_id)
        Card.objects.bulk_create([Card(
            account_id=account_id, stripe_payment_method_id=details.payment_method_id,
            brand=details.brand, last4=details.last4, exp_month=details.exp_month,
            exp_year=details.exp_year, created_at=now)], ignore_conflicts=True)
        card = Card.objects.get(stripe_payment_method_id=details.payment_method_id)
        if card.account_id != account_id:
            raise CardNotSaved("The card belongs to another account.")
        if card.removed_at is None and profile.default_card_id is None:
            _default_card_set_locked(profile=profile, card=card, now=now)
        return card


def _default_card_set_locked(*, profile: BillingProfile, card: Card | None,
                             now: datetime) -> None:
    if profile.stripe_customer_id:
        try:
            stripe_gateway().customer_default_payment_method_set(
                customer_id=profile.stripe_customer_id,
                payment_method_id=card.stripe_payment_method_id if card else None)
        except StripeGatewayError as exc:
            raise provider_error(exc) from exc
    profile.default_card = card
    BillingProfile.objects.filter(account_id=profile.account_id).update(
        default_card=card, updated_at=now)


def active_card(*, account_id: UUID, card_id) -> Card:
    return get_or_raise(Card.objects, CardNotFound, id=card_id, account_id=account_id,
                        removed_at__isnull=True)


def usable_card(*card_ids) -> Card | None:
    """The first of these cards that is still saved."""
    for card_id in card_ids:
        if card_id is not None:
            card = Card.objects.filter(id=card_id, removed_at__isnull=True).first()
            if card is not None:
                return card
    return None


def card_default_set(*, account_id: UUID, card_id, now: datetime | None = None) -> Card:
    now = now or timezone.now()
    with transaction.atomic():
        profile = billing_profile_lock(account_id=account_id)
        card = active_card(account_id=account_id, card_id=card_id)
        _default_card_set_locked(profile=profile, card=card, now=now)
        return card


def card_remove(*, account_id: UUID, card_id, now: datetime | None = None) -> None:
    """Detach the card from the customer and forget it. If it was the default, the newest
    remaining card becomes the default."""
    now = now or timezone.now()
    with transaction.atomic():
        profile = billing_profile_lock(account_id=account_id)
        card = active_card(account_id=account_id, card_id=card_id)
        try:
            stripe_gateway().payment_method_detach(card.stripe_payment_method_id)
        except StripeRequestFailed:
            pass  # already detached at Stripe
        except StripeGatewayError as exc:
            raise provider_error(exc) from exc
        Card.objects.filter(id=card.id).update(removed_at=now)
        if profile.auto_reload_card_id == card.id:
            BillingProfile.objects.filter(account_id=account_id).update(auto_reload_card=None)
        if profile.default_card_id == card.id:
            successor = (Card.objects.filter(account_id=account_id, removed_at__isnull=True)
                         .order_by("-created_at").first())
            _default_card_set_locked(profile=profile, card=successor, now=now)
