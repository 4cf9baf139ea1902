"""Money in through Stripe: customers and saved cards, credit purchases, auto-reload and
auto-scale.

How a charge is made, whatever starts it:
1. decide, under the account's billing-profile lock, and commit a `Payment` row carrying
   a deterministic idempotency key (unique constraints keep one reload per crossing and
   one reload or auto-scale purchase in flight per account);
2. call Stripe with that key, outside any transaction;
3. record the outcome with `payment_outcome_apply`. On success the purchase is written by
   `purchase_record` with the PaymentIntent id as its reference, so it is written once
   however the success is learnt: from our own call, from the customer's confirmation,
   from a webhook, in any order, or all of them.

A worker that dies between 1 and 3 leaves the payment claimed until `claimed_until`;
after that a rerun resumes the charge with the same key, which Stripe answers with the
first charge instead of a second.

Locks: billing profile, then payment rows, then the account row (accounts/locks.py).
"""


import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from uuid import UUID

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from billing.cards import account_for_stripe_customer
from billing.credit import purchase_record
from billing.ledger import Book
from billing.locks import billing_profile_lock
from billing.low_balance import auto_reload_pause_locked
from billing.models import CreditLot, LowBalanceEvent, Payment, Purchase
from billing.stripe_gateway import (
    CURRENCY,
    CardDeclined,
    IntentState,
    StripeGatewayError,
    StripeNotConfigured,
    StripeRequestFailed,
    StripeUnavailable,
    stripe_gateway,
)
from config.money import cents_to_nanos, nanos_to_cents, nanos_to_usd

logger = logging.getLogger(__name__)

Status = Payment.Status
Purpose = Payment.Purpose

# Stripe does not charge less than this in USD.
STRIPE_MINIMUM_CHARGE_CENTS = 50

PURCHASE_KINDS = {
    Purpose.PURCHASE: (Purchase.Kind.STRIPE, CreditLot.Source.PURCHASE),
    Purpose.AUTO_RELOAD: (Purchase.Kind.AUTO_RELOAD, CreditLot.Source.AUTO_RELOAD),
    Purpose.AUTO_SCALE: (Purchase.Kind.AUTO_SCALE, CreditLot.Source.AUTO_SCALE),
}
OFF_SESSION = (Purpose.AUTO_RELOAD, Purpose.AUTO_SCALE)
# How long an off-session charge may be resumed with its idempotency key (Stripe keeps
# keys 24 hours; an hour's margin).
IDEMPOTENCY_WINDOW = timedelta(hours=23)


def claim_until(now: datetime) -> datetime:
    return now + timedelta(seconds=settings.PAYMENT_CLAIM_SECONDS)


# --- Recording what Stripe says about a payment --------------------------------------------


@dataclass(frozen=True, slots=True)
class _Verdict:
    status: str
    failure_code: str = ""
    failure_message: str = ""


# Stripe's message of a card error is written for the cardholder ("Your card was declined.")
# and is shown as it is; these codes come with a message written for developers.
_OWN_WORDS = {
    "payment_intent_authentication_failure":
        "Your bank did not confirm the payment: the authentication failed or was cancelled.",
}


def _verdict(payment: Payment, intent: IntentState | None,
             declined: CardDeclined | None) -> _Verdict:
    if declined is not None:
        return _Verdict(Status.FAILED, declined.code, declined.message)
    assert intent is not None
    if intent.currency and intent.currency != CURRENCY:
        # Credit is bought in US dollars only: an amount in another currency is never
        # credited as if it were dollars, whatever the event says.
        return _Verdict(Status.FAILED, "currency_mismatch",
                        f"The payment is in {intent.currency.upper()}, not USD.")
    off_session = payment.purpose in OFF_SESSION
    match intent.status:
        case "succeeded":
            return _Verdict(Status.SUCCEEDED)
        case "processing" | "requires_capture":
            return _Verdict(Status.PROCESSING)
        case "canceled":
            return _Verdict(Status.CANCELED, "canceled", "The payment was canceled.")
        case "requires_action" if off_session:
            return _Verdict(Status.FAILED, "authentication_required",
                            "The card needs the cardholder to authenticate the payment.")
        case "requires_payment_method" if intent.failure_code or intent.failure_message \
                or off_session:
            return _Verdict(Status.FAILED, intent.failure_code or "payment_failed",
                            _OWN_WORDS.get(intent.failure_code)
                            or intent.failure_message or "The payment failed.")
        case _:
            return _Verdict(Status.REQUIRES_ACTION)


def payment_outcome_apply(*, payment_id: UUID, intent: IntentState | None = None,
                          declined: CardDeclined | None = None,
                          now: datetime | None = None) -> Payment:
    """Record Stripe's answer about a payment. A success writes the purchase (lot and
    ledger) once, whoever reports it and however often; success wins over an earlier
    failure (money that arrived is always credited); other news about a finished payment
    is ignored."""
    now = now or timezone.now()
    account_id = Payment.objects.values_list("account_id", flat=True).get(id=payment_id)
    with transaction.atomic():
        profile = billing_profile_lock(account_id=account_id)
        payment = Payment.objects.select_for_update().get(id=payment_id)
        verdict = _verdict(payment, intent, declined)
        if payment.status == Status.SUCCEEDED or (
                payment.status in Payment.TERMINAL and verdict.status != Status.SUCCEEDED):
            return payment
        intent_id = intent.id if intent else (declined.payment_intent_id if declined else None)
        if intent_id and not payment.stripe_payment_intent_id:
            payment.stripe_payment_intent_id = intent_id
        payment.status = verdict.status
        payment.failure_code = verdict.failure_code[:64]
        payment.failure_message = verdict.failure_message[:255]
        payment.updated_at = now
        if verdict.status != Status.PROCESSING:
            payment.claimed_until = None
        if verdict.status == Status.SUCCEEDED:
            _payment_succeeded_locked(payment=payment, intent=intent, now=now)
        elif verdict.status == Status.FAILED and payment.purpose == Purpose.AUTO_RELOAD:
            reason = f"{payment.failure_code}: {payment.failure_message}"
            auto_reload_pause_locked(profile=profile, reason=reason, now=now)
            low_balance_event_close(payment.low_balance_event_id, f"reload failed ({reason})",
                                     now)
        payment.save()
        return payment


def _payment_succeeded_locked(*, payment: Payment, intent: IntentState, now: datetime) -> None:
    received = intent.amount_received_cents or intent.amount_cents
    if received != nanos_to_cents(payment.amount_nanos):
        logger.warning("payment %s: Stripe received %s cents, %s were asked", payment.id,
                       received, nanos_to_cents(payment.amount_nanos))
    kind, lot_source = PURCHASE_KINDS[payment.purpose]
    purchase, _ = purchase_record(
        account_id=payment.account_id, amount_nanos=cents_to_nanos(received),
        reference=intent.id, kind=kind, cash_book=Book.STRIPE_CASH, lot_source=lot_source,
        now=now)
    payment.purchase = purchase
    payment.stripe_charge_id = intent.charge_id or ""
    payment.receipt_url = intent.receipt_url[:500]
    low_balance_event_close(payment.low_balance_event_id,
                             f"reloaded {nanos_to_usd(purchase.amount_nanos)} USD", now)


def low_balance_event_close(event_id: int | None, outcome: str, now: datetime) -> None:
    if event_id is not None:
        LowBalanceEvent.objects.filter(id=event_id, handled_at__isnull=True).update(
            handled_at=now, outcome=outcome[:255])


def payment_for_intent(intent: IntentState) -> Payment | None:
    """Our payment for a PaymentIntent: by its id, or by the payment id we put in its
    metadata (a decline can reach us before we learnt the intent's id)."""
    payment = Payment.objects.filter(stripe_payment_intent_id=intent.id).first()
    if payment is None and intent.metadata.get("payment_id"):
        try:
            payment_id = UUID(str(intent.metadata["payment_id"]))
        except ValueError:
            return None
        payment = Payment.objects.filter(id=payment_id,
                                         stripe_payment_intent_id__isnull=True).first()
        if payment is not None and account_for_stripe_customer(intent.customer_id) != \
                payment.account_id:
            payment = None
    return payment


def charge_off_session(*, payment: Payment, customer_id: str, payment_method_id: str,
                        now: datetime) -> Payment:
    """Make the claimed payment's charge on the saved card and record the outcome."""
    if now - payment.created_at >= IDEMPOTENCY_WINDOW:
        # Stripe forgets an idempotency key after 24 hours: a charge sent again later
        # could be a second charge if the first went through. Give up instead; if the
        # first did go through, its payment_intent.succeeded still credits it.
        return payment_outcome_apply(payment_id=payment.id, now=now, declined=CardDeclined(
            code="not_resumed", message="The charge could not be completed in time; "
                                        "it was not retried."))
    metadata = {"payment_id": str(payment.id), "account_id": str(payment.account_id),
                "purpose": payment.purpose}
    try:
        gateway = stripe_gateway()
        intent = gateway.payment_intent_create(
            amount_cents=nanos_to_cents(payment.amount_nanos), customer_id=customer_id,
            payment_method_id=payment_method_id, metadata=metadata,
            idempotency_key=payment.idempotency_key, confirm=True, off_session=True)
    except CardDeclined as exc:
        return payment_outcome_apply(payment_id=payment.id, declined=exc, now=now)
    except StripeUnavailable:
        # Stripe may or may not have charged: release the claim so that a retry resumes
        # at once, with the same idempotency key.
        Payment.objects.filter(id=payment.id, status__in=Payment.IN_FLIGHT).update(
            claimed_until=None)
        raise
    except (StripeRequestFailed, StripeNotConfigured) as exc:
        return payment_outcome_apply(payment_id=payment.id, now=now, declined=CardDeclined(
            code="payment_refused", message=str(exc)[:255]))
    payment = payment_outcome_apply(payment_id=payment.id, intent=intent, now=now)
    if intent.status == "requires_action":
        try:  # an off-session charge nobody will authenticate
            gateway.payment_intent_cancel(intent.id)
        except StripeGatewayError:
            logger.warning("could not cancel payment intent %s", intent.id)
    return payment
