"""Auto-reload: one off-session charge per crossing of the threshold, within the monthly
maximum; a declined card pauses it and tells the customer."""


from dataclasses import dataclass
from datetime import datetime, timedelta
from uuid import UUID

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone

from accounts.models import Account
from billing.cards import active_card, usable_card
from billing.errors import NoCard
from billing.locks import billing_profile_lock
from billing.low_balance import (
    auto_reload_pause_locked,
    auto_reload_threshold_sync_locked,
    low_balance_event_open,
)
from billing.models import BillingProfile, Card, LowBalanceEvent, Payment
from billing.payment_outcomes import (
    OFF_SESSION,
    Purpose,
    charge_off_session,
    claim_until,
    low_balance_event_close,
    payment_outcome_apply,
)
from billing.purchases import InvalidPurchaseAmount, purchase_amount_validate
from billing.selectors import month_spent_nanos
from billing.stripe_gateway import (
    CardDeclined,
)
from config.money import nanos_to_usd

# --- Auto-reload ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AutoReloadSettings:
    enabled: bool
    threshold_nanos: int
    amount_nanos: int
    monthly_max_nanos: int
    card_id: UUID | None


def auto_reload_settings_set(*, account_id: UUID, settings_: AutoReloadSettings,
                             now: datetime | None = None) -> BillingProfile:
    """Change the auto-reload settings. Saving them with auto-reload enabled also resumes
    a paused auto-reload. If this puts the balance below an active threshold (turned on,
    resumed or raised), a reload starts as if the balance had just crossed it."""
    now = now or timezone.now()
    purchase_amount_validate(settings_.amount_nanos)
    with transaction.atomic():
        profile = billing_profile_lock(account_id=account_id)
        card = None
        if settings_.card_id is not None:
            card = active_card(account_id=account_id, card_id=settings_.card_id)
        if settings_.enabled and card is None and profile.default_card_id is None:
            raise NoCard("Save a card before turning auto-reload on.")
        if settings_.monthly_max_nanos < settings_.amount_nanos:
            raise InvalidPurchaseAmount(extra={"fields": {"monthly_max_usd": [
                "Must be at least the reload amount."]}})
        old_threshold = profile.auto_reload_threshold_nanos if profile.auto_reload_active \
            else None
        fields = {
            "auto_reload_enabled": settings_.enabled,
            "auto_reload_threshold_nanos": settings_.threshold_nanos,
            "auto_reload_amount_nanos": settings_.amount_nanos,
            "auto_reload_monthly_max_nanos": settings_.monthly_max_nanos,
            "auto_reload_card": card,
            "auto_reload_paused_at": None,
            "auto_reload_paused_reason": "",
            "updated_at": now,
        }
        BillingProfile.objects.filter(account_id=account_id).update(**fields)
        for name, value in fields.items():
            setattr(profile, name, value)
        account = auto_reload_threshold_sync_locked(profile=profile)
        below_now = account.balance_nanos < profile.auto_reload_threshold_nanos
        below_before = old_threshold is not None and account.balance_nanos < old_threshold
        if profile.auto_reload_active and below_now and not below_before:
            # Already below: no charge will cross the threshold, so record the crossing now.
            low_balance_event_open(account=account,
                                   threshold_nanos=profile.auto_reload_threshold_nanos,
                                   balance_before_nanos=account.balance_nanos, now=now)
        return profile


def _auto_reload_refusal(*, profile: BillingProfile, account: Account,
                         now: datetime) -> tuple[str, bool]:
    """Why no reload is made now ('' when one is); and whether that pauses auto-reload."""
    if not profile.auto_reload_enabled:
        return "auto-reload is off", False
    if profile.auto_reload_paused_at is not None:
        return f"auto-reload is paused ({profile.auto_reload_paused_reason})", False
    if account.status != Account.Status.ACTIVE:
        return "the account is suspended", False
    if account.balance_nanos >= profile.auto_reload_threshold_nanos:
        return "the balance is back above the threshold", False
    spent = month_spent_nanos(account_id=account.id, purpose=Purpose.AUTO_RELOAD, now=now)
    if spent + profile.auto_reload_amount_nanos > profile.auto_reload_monthly_max_nanos:
        return (f"monthly maximum reached ({nanos_to_usd(spent)} of "
                f"{nanos_to_usd(profile.auto_reload_monthly_max_nanos)} USD)"), False
    if _reload_card(profile) is None or not profile.stripe_customer_id:
        return "no saved card to charge", True
    return "", False


def _reload_card(profile: BillingProfile) -> Card | None:
    return usable_card(profile.auto_reload_card_id, profile.default_card_id)


def auto_reload_run(*, low_balance_event_id: int, now: datetime | None = None) -> Payment | None:
    """Answer one low-balance crossing with at most one reload. A rerun is a no-op while
    the reload is being charged or once it is done; it resumes a charge whose worker died
    (after its claim ran out), with the same idempotency key."""
    now = now or timezone.now()
    account_id = (LowBalanceEvent.objects.filter(id=low_balance_event_id)
                  .values_list("account_id", flat=True).first())
    if account_id is None:
        return None
    with transaction.atomic():
        profile = billing_profile_lock(account_id=account_id)
        event = LowBalanceEvent.objects.select_for_update().get(id=low_balance_event_id)
        payment = Payment.objects.filter(low_balance_event=event).first()
        if payment is not None:
            if payment.status not in Payment.IN_FLIGHT or (
                    payment.claimed_until is not None and payment.claimed_until > now):
                return payment
            payment.claimed_until = claim_until(now)
            Payment.objects.filter(id=payment.id).update(claimed_until=payment.claimed_until)
            card = payment.card
        else:
            if event.handled_at is not None:
                return None
            account = Account.objects.get(id=account_id)
            reason, pauses = _auto_reload_refusal(profile=profile, account=account, now=now)
            if reason:
                if pauses:
                    auto_reload_pause_locked(profile=profile, reason=reason, now=now)
                low_balance_event_close(event.id, f"no reload: {reason}", now)
                return None
            card = _reload_card(profile)
            try:
                with transaction.atomic():
                    payment = Payment.objects.create(
                        account_id=account_id, purpose=Purpose.AUTO_RELOAD,
                        amount_nanos=profile.auto_reload_amount_nanos, card=card,
                        low_balance_event=event, idempotency_key=f"auto-reload:{event.id}",
                        claimed_until=claim_until(now), created_at=now, updated_at=now)
            except IntegrityError:
                low_balance_event_close(event.id, "no reload: another reload is in flight",
                                         now)
                return None
        customer_id = profile.stripe_customer_id
    if card is None or card.removed_at is not None:
        return payment_outcome_apply(payment_id=payment.id, now=now, declined=CardDeclined(
            code="no_card", message="The card to charge was removed."))
    return charge_off_session(payment=payment, customer_id=customer_id,
                               payment_method_id=card.stripe_payment_method_id, now=now)


def payment_resume(*, payment_id: UUID, now: datetime | None = None) -> Payment:
    """Finish an off-session charge whose worker died: charge again with the same
    idempotency key (Stripe answers with the first charge if there was one)."""
    now = now or timezone.now()
    payment = Payment.objects.select_related("card").get(id=payment_id)
    if payment.low_balance_event_id is not None:
        return auto_reload_run(low_balance_event_id=payment.low_balance_event_id, now=now)
    if payment.purpose not in OFF_SESSION:
        return payment
    with transaction.atomic():
        profile = billing_profile_lock(account_id=payment.account_id)
        claimed = Payment.objects.filter(
            Q(claimed_until__lt=now) | Q(claimed_until__isnull=True),
            id=payment.id, status__in=Payment.IN_FLIGHT,
        ).update(claimed_until=claim_until(now))
        if not claimed:
            return payment
        customer_id = profile.stripe_customer_id
    if payment.card is None or payment.card.removed_at is not None:
        return payment_outcome_apply(payment_id=payment.id, now=now, declined=CardDeclined(
            code="no_card", message="The card to charge was removed."))
    return charge_off_session(payment=payment, customer_id=customer_id,
                               payment_method_id=payment.card.stripe_payment_method_id, now=now)


def payments_stalled(*, now: datetime) -> list[UUID]:
    """Off-session payments left in flight by a worker that died, and crossings nobody
    picked up (a task that was never enqueued)."""
    stalled = list(Payment.objects.filter(
        Q(claimed_until__lt=now) | Q(claimed_until__isnull=True),
        status__in=Payment.IN_FLIGHT, purpose__in=OFF_SESSION,
        created_at__lt=now - timedelta(seconds=settings.PAYMENT_CLAIM_SECONDS),
    ).values_list("id", flat=True))
    return stalled


def low_balance_events_unhandled(*, now: datetime) -> list[int]:
    return list(LowBalanceEvent.objects.filter(
        handled_at__isnull=True, payment__isnull=True,
        created_at__lt=now - timedelta(minutes=1)).values_list("id", flat=True))
