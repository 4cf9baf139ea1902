"""Credit purchases the customer starts: with a saved card, a new card confirmed on the
page, or Stripe Checkout; and what Stripe reports about them."""


from datetime import datetime
from uuid import UUID

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from billing.cards import active_card, stripe_customer_ensure, usable_card
from billing.errors import PaymentNotFound, account_active_ensure, provider_error
from billing.models import BillingProfile, Card, Payment
from billing.payment_outcomes import Purpose, Status, payment_for_intent, payment_outcome_apply
from billing.stripe_gateway import (
    CardDeclined,
    IntentState,
    StripeGatewayError,
    stripe_gateway,
)
from config.api import ApplicationError
from config.lookups import get_or_raise
from config.money import NANOS_PER_CENT, cents_to_nanos, nanos_to_cents, nanos_to_usd

# --- Credit purchases ------------------------------------------------------------------------


class InvalidPurchaseAmount(ApplicationError):
    code = "invalid_request"
    message = "The request is invalid."


def purchase_amount_validate(amount_nanos: int) -> None:
    low, high = settings.PURCHASE_MIN_CENTS, settings.PURCHASE_MAX_CENTS
    problem = None
    if amount_nanos % NANOS_PER_CENT:
        problem = "Must be a whole number of cents."
    elif not low * NANOS_PER_CENT <= amount_nanos <= high * NANOS_PER_CENT:
        problem = (f"Must be between {nanos_to_usd(cents_to_nanos(low))} and "
                   f"{nanos_to_usd(cents_to_nanos(high))}.")
    if problem:
        raise InvalidPurchaseAmount(extra={"fields": {"amount_usd": [problem]}})


def _purchase_payment_create(*, account_id: UUID, amount_nanos: int, card: Card | None,
                             key_prefix: str, now: datetime,
                             idempotency_key: str | None = None) -> Payment:
    payment = Payment(account_id=account_id, purpose=Purpose.PURCHASE,
                      amount_nanos=amount_nanos, card=card, created_at=now, updated_at=now)
    payment.idempotency_key = idempotency_key or f"{key_prefix}:{payment.id}"
    payment.save(force_insert=True)
    return payment


class IdempotencyKeyReused(ApplicationError):
    status = 409
    code = "idempotency_key_reused"
    message = "This Idempotency-Key was used for a different purchase."


class PurchaseInProgress(ApplicationError):
    status = 409
    code = "purchase_in_progress"
    message = "A purchase with this Idempotency-Key is still being made; ask again shortly."


def _client_purchase_key(account_id: UUID, client_key: str) -> str:
    return f"purchase:{account_id}:{client_key}"


def _purchase_replay(*, payment: Payment, amount_nanos: int, card: Card | None,
                     now: datetime) -> tuple[Payment, IntentState | None]:
    """A purchase asked for again with the same Idempotency-Key: the first one, as it
    stands at Stripe now; never a second charge."""
    if payment.amount_nanos != amount_nanos or (card is not None and payment.card_id != card.id):
        raise IdempotencyKeyReused()
    if not payment.stripe_payment_intent_id:
        if payment.status in Payment.TERMINAL:
            return payment, None
        raise PurchaseInProgress(headers={"Retry-After": "1"})
    return _payment_refresh(payment=payment, now=now)


def purchase_start(*, account_id: UUID, amount_nanos: int, card_id=None,
                   confirm: bool = True, client_key: str | None = None,
                   now: datetime | None = None) -> tuple[Payment, IntentState | None, bool]:
    """Buy credit: a PaymentIntent for the amount on the given saved card (or the
    default card). With a card and `confirm`, it is charged now; otherwise the customer's
    browser confirms it with the returned client secret. With the client's `client_key`
    (its Idempotency-Key), asking again returns the first purchase instead of charging
    twice. Returns the payment, the intent (None when the card was declined outright)
    and whether this call created the purchase."""
    now = now or timezone.now()
    purchase_amount_validate(amount_nanos)
    account_active_ensure(account_id=account_id)
    card = None
    if card_id is not None:
        card = active_card(account_id=account_id, card_id=card_id)
    key = _client_purchase_key(account_id, client_key) if client_key is not None else None
    if key is not None:
        existing = Payment.objects.filter(idempotency_key=key).first()
        if existing is not None:
            return *_purchase_replay(payment=existing, amount_nanos=amount_nanos, card=card,
                                     now=now), False
    customer_id = stripe_customer_ensure(account_id=account_id, now=now)
    if card is None:
        card = usable_card(BillingProfile.objects.filter(account_id=account_id)
                            .values_list("default_card_id", flat=True).first())
    try:
        with transaction.atomic():
            payment = _purchase_payment_create(account_id=account_id, amount_nanos=amount_nanos,
                                               card=card, key_prefix="purchase", now=now,
                                               idempotency_key=key)
    except IntegrityError:  # the same key, at the same moment: the other call makes it
        existing = Payment.objects.get(idempotency_key=key)
        return *_purchase_replay(payment=existing, amount_nanos=amount_nanos, card=None,
                                 now=now), False
    try:
        intent = stripe_gateway().payment_intent_create(
            amount_cents=nanos_to_cents(amount_nanos), customer_id=customer_id,
            payment_method_id=card.stripe_payment_method_id if card else None,
            metadata={"payment_id": str(payment.id), "account_id": str(account_id),
                      "purpose": Purpose.PURCHASE},
            idempotency_key=payment.idempotency_key, confirm=confirm and card is not None)
    except CardDeclined as exc:
        return payment_outcome_apply(payment_id=payment.id, declined=exc, now=now), None, True
    except StripeGatewayError as exc:
        raise provider_error(exc) from exc
    return payment_outcome_apply(payment_id=payment.id, intent=intent, now=now), intent, True


def _account_payment(*, account_id: UUID, payment_id) -> Payment:
    return get_or_raise(Payment.objects, PaymentNotFound, id=payment_id, account_id=account_id)


def purchase_confirm(*, account_id: UUID, payment_id,
                     now: datetime | None = None) -> tuple[Payment, IntentState | None]:
    """Confirm a purchase on its card, or learn how the customer's own confirmation went,
    and record the outcome. Safe to call again and again."""
    now = now or timezone.now()
    payment = _account_payment(account_id=account_id, payment_id=payment_id)
    if payment.status == Status.SUCCEEDED or not payment.stripe_payment_intent_id:
        return payment, None
    gateway = stripe_gateway()
    try:
        intent = gateway.payment_intent_retrieve(payment.stripe_payment_intent_id)
        if intent.status == "requires_confirmation":
            intent = gateway.payment_intent_confirm(
                intent.id, idempotency_key=f"purchase-confirm:{payment.id}")
    except CardDeclined as exc:
        return payment_outcome_apply(payment_id=payment.id, declined=exc, now=now), None
    except StripeGatewayError as exc:
        raise provider_error(exc) from exc
    return payment_outcome_apply(payment_id=payment.id, intent=intent, now=now), intent


def purchase_checkout_start(*, account_id: UUID, amount_nanos: int, success_url: str,
                            cancel_url: str, now: datetime | None = None):
    """Buy credit on a Stripe-hosted Checkout page. The purchase is recorded when the
    PaymentIntent behind the session succeeds (webhook), like any purchase."""
    now = now or timezone.now()
    purchase_amount_validate(amount_nanos)
    account_active_ensure(account_id=account_id)
    customer_id = stripe_customer_ensure(account_id=account_id, now=now)
    payment = _purchase_payment_create(account_id=account_id, amount_nanos=amount_nanos,
                                       card=None, key_prefix="checkout", now=now)
    try:
        session = stripe_gateway().checkout_session_create(
            amount_cents=nanos_to_cents(amount_nanos), customer_id=customer_id,
            success_url=success_url, cancel_url=cancel_url,
            metadata={"payment_id": str(payment.id), "account_id": str(account_id),
                      "purpose": Purpose.PURCHASE},
            idempotency_key=payment.idempotency_key)
    except StripeGatewayError as exc:
        raise provider_error(exc) from exc
    Payment.objects.filter(id=payment.id).update(
        stripe_checkout_session_id=session.id, status=Status.REQUIRES_ACTION, updated_at=now)
    payment.refresh_from_db()
    return payment, session


def payment_intent_event_apply(*, intent: IntentState, now: datetime) -> str:
    """A payment_intent.* webhook: record the news on our payment, if it is ours."""
    payment = payment_for_intent(intent)
    if payment is None:
        return "ignored: not a payment of ours"
    payment = payment_outcome_apply(payment_id=payment.id, intent=intent, now=now)
    return f"payment {payment.id} {payment.status}"


def payment_intent_sync(*, payment_intent_id: str, now: datetime | None = None) -> Payment | None:
    """Ask Stripe how our payment for this PaymentIntent stands and record it (news that
    arrived out of order, such as a refund before the success event)."""
    payment = Payment.objects.filter(stripe_payment_intent_id=payment_intent_id).first()
    if payment is None:
        return None
    return _payment_refresh(payment=payment, now=now)[0]


def _payment_refresh(*, payment: Payment,
                     now: datetime | None) -> tuple[Payment, IntentState]:
    """Record how the payment's PaymentIntent stands at Stripe now."""
    try:
        intent = stripe_gateway().payment_intent_retrieve(payment.stripe_payment_intent_id)
    except StripeGatewayError as exc:
        raise provider_error(exc) from exc
    return payment_outcome_apply(payment_id=payment.id, intent=intent, now=now), intent
