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
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from uuid import UUID

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone

from accounts.locks import account_lock, billing_profile_lock
from accounts.models import Account
from billing.ledger import Book
from billing.models import BillingProfile, Card, CreditLot, LowBalanceEvent, Payment, Purchase
from billing.money import NANOS_PER_CENT, cents_to_nanos, nanos_to_cents, nanos_to_usd
from billing.selectors import month_spent_nanos
from billing.services import low_balance_event_open, purchase_record
from billing.stripe_gateway import (
    CardDeclined,
    CardDetails,
    IntentState,
    SetupIntentState,
    StripeGatewayError,
    StripeNotConfigured,
    StripeRequestFailed,
    StripeUnavailable,
    stripe_gateway,
)
from config.api import ApplicationError
from ratelimits.models import Tier

logger = logging.getLogger(__name__)

Status = Payment.Status
Purpose = Payment.Purpose

# Stripe does not charge less than this in USD.
STRIPE_MINIMUM_CHARGE_CENTS = 50

_PURCHASE_KINDS = {
    Purpose.PURCHASE: (Purchase.Kind.STRIPE, CreditLot.Source.PURCHASE),
    Purpose.AUTO_RELOAD: (Purchase.Kind.AUTO_RELOAD, CreditLot.Source.AUTO_RELOAD),
    Purpose.AUTO_SCALE: (Purchase.Kind.AUTO_SCALE, CreditLot.Source.AUTO_SCALE),
}
_OFF_SESSION = (Purpose.AUTO_RELOAD, Purpose.AUTO_SCALE)
# How long an off-session charge may be resumed with its idempotency key (Stripe keeps
# keys 24 hours; an hour's margin).
IDEMPOTENCY_WINDOW = timedelta(hours=23)


# --- Errors the customer API renders ----------------------------------------------------


class PaymentFailed(ApplicationError):
    status = 402
    code = "payment_failed"
    message = "The payment failed."


class CardNotFound(ApplicationError):
    status = 404
    code = "card_not_found"
    message = "No saved card with this id on this account."


class PaymentNotFound(ApplicationError):
    status = 404
    code = "payment_not_found"
    message = "No payment with this id on this account."


class CardNotSaved(ApplicationError):
    status = 400
    code = "card_not_saved"
    message = "The card was not set up."


class NoCard(ApplicationError):
    status = 400
    code = "no_card"
    message = "Save a card first."


class PaymentProviderUnavailable(ApplicationError):
    status = 503
    code = "payment_provider_unavailable"
    message = ("The payment provider cannot be reached. Try again in a moment; a payment "
               "that went through is credited as soon as the provider reports it.")


class PaymentsNotConfigured(ApplicationError):
    status = 503
    code = "payments_not_configured"
    message = ("Payments are not configured on this service, so cards cannot be saved or "
               "charged. The operator must set STRIPE_SECRET_KEY (see README.md).")


class PaymentProviderError(ApplicationError):
    status = 502
    code = "payment_provider_error"
    message = "The payment provider refused the request."


class AccountSuspended(ApplicationError):
    status = 403
    code = "account_suspended"
    message = "The account is suspended; payments are not taken until staff reinstate it."


def account_active_ensure(*, account_id: UUID) -> None:
    """Suspended accounts (a dispute, a fraud review) take no new payments."""
    status = Account.objects.values_list("status", flat=True).get(id=account_id)
    if status != Account.Status.ACTIVE:
        raise AccountSuspended()


def provider_error(exc: StripeGatewayError) -> ApplicationError:
    if isinstance(exc, StripeNotConfigured):
        # Not a passing outage: retrying will not help until the operator configures it.
        return PaymentsNotConfigured()
    if isinstance(exc, StripeUnavailable):
        return PaymentProviderUnavailable()
    return PaymentProviderError(str(exc) or None)


def _claim_until(now: datetime) -> datetime:
    return now + timedelta(seconds=settings.PAYMENT_CLAIM_SECONDS)


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


def _active_card(*, account_id: UUID, card_id) -> Card:
    try:
        return Card.objects.get(id=card_id, account_id=account_id, removed_at__isnull=True)
    except (Card.DoesNotExist, ValidationError, ValueError, TypeError):
        raise CardNotFound() from None


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
        card = _active_card(account_id=account_id, card_id=card_id)
        _default_card_set_locked(profile=profile, card=card, now=now)
        return card


def card_remove(*, account_id: UUID, card_id, now: datetime | None = None) -> None:
    """Detach the card from the customer and forget it. If it was the default, the newest
    remaining card becomes the default."""
    now = now or timezone.now()
    with transaction.atomic():
        profile = billing_profile_lock(account_id=account_id)
        card = _active_card(account_id=account_id, card_id=card_id)
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


# --- Recording what Stripe says about a payment --------------------------------------------


@dataclass(frozen=True, slots=True)
class _Verdict:
    status: str
    failure_code: str = ""
    failure_message: str = ""


def _verdict(payment: Payment, intent: IntentState | None,
             declined: CardDeclined | None) -> _Verdict:
    if declined is not None:
        return _Verdict(Status.FAILED, declined.code, declined.message)
    assert intent is not None
    off_session = payment.purpose in _OFF_SESSION
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
                            intent.failure_message or "The payment failed.")
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
            _auto_reload_pause_locked(profile=profile, reason=reason, now=now)
            _low_balance_event_close(payment.low_balance_event_id, f"reload failed ({reason})",
                                     now)
        payment.save()
        return payment


def _payment_succeeded_locked(*, payment: Payment, intent: IntentState, now: datetime) -> None:
    received = intent.amount_received_cents or intent.amount_cents
    if received != nanos_to_cents(payment.amount_nanos):
        logger.warning("payment %s: Stripe received %s cents, %s were asked", payment.id,
                       received, nanos_to_cents(payment.amount_nanos))
    kind, lot_source = _PURCHASE_KINDS[payment.purpose]
    purchase, _ = purchase_record(
        account_id=payment.account_id, amount_nanos=cents_to_nanos(received),
        reference=intent.id, kind=kind, cash_book=Book.STRIPE_CASH, lot_source=lot_source,
        now=now)
    payment.purchase = purchase
    payment.stripe_charge_id = intent.charge_id or ""
    payment.receipt_url = intent.receipt_url[:500]
    _low_balance_event_close(payment.low_balance_event_id,
                             f"reloaded {nanos_to_usd(purchase.amount_nanos)} USD", now)


def _low_balance_event_close(event_id: int | None, outcome: str, now: datetime) -> None:
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


def _charge_off_session(*, payment: Payment, customer_id: str, payment_method_id: str,
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
        card = _active_card(account_id=account_id, card_id=card_id)
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
    try:
        return Payment.objects.get(id=payment_id, account_id=account_id)
    except (Payment.DoesNotExist, ValidationError, ValueError, TypeError):
        raise PaymentNotFound() from None


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


# --- Auto-reload ------------------------------------------------------------------------------


def _auto_reload_threshold_sync_locked(*, profile: BillingProfile) -> Account:
    """Keep the run path's trigger column equal to the threshold while auto-reload is on
    and not paused, NULL otherwise. Call with the profile locked."""
    wanted = profile.auto_reload_threshold_nanos if profile.auto_reload_active else None
    account = account_lock(account_id=profile.account_id)
    if account.auto_reload_threshold_nanos != wanted:
        Account.objects.filter(id=account.id).update(auto_reload_threshold_nanos=wanted)
        account.auto_reload_threshold_nanos = wanted
    return account


def _auto_reload_pause_locked(*, profile: BillingProfile, reason: str, now: datetime) -> None:
    if not profile.auto_reload_enabled or profile.auto_reload_paused_at is not None:
        return
    profile.auto_reload_paused_at = now
    profile.auto_reload_paused_reason = reason[:255]
    BillingProfile.objects.filter(account_id=profile.account_id).update(
        auto_reload_paused_at=now, auto_reload_paused_reason=reason[:255], updated_at=now)
    _auto_reload_threshold_sync_locked(profile=profile)
    account_id = profile.account_id

    def notify():
        from billing.notifications import auto_reload_failed_notify

        auto_reload_failed_notify(account_id=account_id, reason=reason)

    transaction.on_commit(notify, robust=True)


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
            card = _active_card(account_id=account_id, card_id=settings_.card_id)
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
        account = _auto_reload_threshold_sync_locked(profile=profile)
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
            payment.claimed_until = _claim_until(now)
            Payment.objects.filter(id=payment.id).update(claimed_until=payment.claimed_until)
            card = payment.card
        else:
            if event.handled_at is not None:
                return None
            account = Account.objects.get(id=account_id)
            reason, pauses = _auto_reload_refusal(profile=profile, account=account, now=now)
            if reason:
                if pauses:
                    _auto_reload_pause_locked(profile=profile, reason=reason, now=now)
                _low_balance_event_close(event.id, f"no reload: {reason}", now)
                return None
            card = _reload_card(profile)
            try:
                with transaction.atomic():
                    payment = Payment.objects.create(
                        account_id=account_id, purpose=Purpose.AUTO_RELOAD,
                        amount_nanos=profile.auto_reload_amount_nanos, card=card,
                        low_balance_event=event, idempotency_key=f"auto-reload:{event.id}",
                        claimed_until=_claim_until(now), created_at=now, updated_at=now)
            except IntegrityError:
                _low_balance_event_close(event.id, "no reload: another reload is in flight",
                                         now)
                return None
        customer_id = profile.stripe_customer_id
    if card is None or card.removed_at is not None:
        return payment_outcome_apply(payment_id=payment.id, now=now, declined=CardDeclined(
            code="no_card", message="The card to charge was removed."))
    return _charge_off_session(payment=payment, customer_id=customer_id,
                               payment_method_id=card.stripe_payment_method_id, now=now)


def payment_resume(*, payment_id: UUID, now: datetime | None = None) -> Payment:
    """Finish an off-session charge whose worker died: charge again with the same
    idempotency key (Stripe answers with the first charge if there was one)."""
    now = now or timezone.now()
    payment = Payment.objects.select_related("card").get(id=payment_id)
    if payment.low_balance_event_id is not None:
        return auto_reload_run(low_balance_event_id=payment.low_balance_event_id, now=now)
    if payment.purpose not in _OFF_SESSION:
        return payment
    with transaction.atomic():
        profile = billing_profile_lock(account_id=payment.account_id)
        claimed = Payment.objects.filter(
            Q(claimed_until__lt=now) | Q(claimed_until__isnull=True),
            id=payment.id, status__in=Payment.IN_FLIGHT,
        ).update(claimed_until=_claim_until(now))
        if not claimed:
            return payment
        customer_id = profile.stripe_customer_id
    if payment.card is None or payment.card.removed_at is not None:
        return payment_outcome_apply(payment_id=payment.id, now=now, declined=CardDeclined(
            code="no_card", message="The card to charge was removed."))
    return _charge_off_session(payment=payment, customer_id=customer_id,
                               payment_method_id=payment.card.stripe_payment_method_id, now=now)


def payments_stalled(*, now: datetime) -> list[UUID]:
    """Off-session payments left in flight by a worker that died, and crossings nobody
    picked up (a task that was never enqueued)."""
    stalled = list(Payment.objects.filter(
        Q(claimed_until__lt=now) | Q(claimed_until__isnull=True),
        status__in=Payment.IN_FLIGHT, purpose__in=_OFF_SESSION,
        created_at__lt=now - timedelta(seconds=settings.PAYMENT_CLAIM_SECONDS),
    ).values_list("id", flat=True))
    return stalled


def low_balance_events_unhandled(*, now: datetime) -> list[int]:
    return list(LowBalanceEvent.objects.filter(
        handled_at__isnull=True, payment__isnull=True,
        created_at__lt=now - timedelta(minutes=1)).values_list("id", flat=True))


# --- Auto-scale -------------------------------------------------------------------------------


def auto_scale_settings_set(*, account_id: UUID, max_monthly_nanos: int,
                            now: datetime | None = None) -> BillingProfile:
    now = now or timezone.now()
    with transaction.atomic():
        profile = billing_profile_lock(account_id=account_id)
        BillingProfile.objects.filter(account_id=account_id).update(
            auto_scale_max_monthly_nanos=max_monthly_nanos, updated_at=now)
        profile.auto_scale_max_monthly_nanos = max_monthly_nanos
        return profile


def _ceil_to_cents(nanos: int) -> int:
    return -(-nanos // NANOS_PER_CENT) * NANOS_PER_CENT


def auto_scale_purchase(*, account_id: UUID, now: datetime | None = None) -> bool:
    """Buy the credit that unlocks the next tier with more concurrency slots, on the
    default card, within the account's max monthly spend, so that a run refused for
    concurrency can go ahead. The amount is that tier's threshold less what the account
    purchased in the window, rounded up to whole cents (at least Stripe's minimum charge).

    Returns True when the tier was raised, by this call or by another caller of the same
    burst (whose purchase in flight this call waits for); False when no purchase can be
    made (no card, top tier, over the monthly maximum, declined). Call it outside any
    transaction: it commits the decision before charging, and may wait."""
    now = now or timezone.now()
    observed = Account.objects.values_list("purchased_window_nanos", flat=True).get(
        id=account_id)
    burst_start = now - timedelta(seconds=settings.AUTO_SCALE_BURST_SECONDS)
    with transaction.atomic():
        profile = billing_profile_lock(account_id=account_id)
        from metering.services import account_bring_current

        account = account_bring_current(account_id=account_id, now=now)
        if account.status != Account.Status.ACTIVE:
            return False
        if account.purchased_window_nanos > observed:
            return True  # another caller's purchase raised the tier meanwhile
        mine = Payment.objects.filter(account_id=account_id, purpose=Purpose.AUTO_SCALE)
        if mine.filter(status=Status.SUCCEEDED, updated_at__gte=burst_start).exists():
            return True  # the same burst already bought its tier
        in_flight = mine.filter(status__in=Payment.IN_FLIGHT).first()
        if in_flight is None:
            # The next tier that adds concurrency slots: auto-scale answers a run refused
            # for concurrency, and a tier with no more slots would not let it run.
            tier = (Tier.objects.filter(min_purchased_nanos__gt=account.purchased_window_nanos,
                                        concurrency__gt=account.tier_concurrency)
                    .order_by("min_purchased_nanos").first())
            card = usable_card(profile.default_card_id)
            if tier is None or card is None or not profile.stripe_customer_id:
                return False
            amount = max(_ceil_to_cents(tier.min_purchased_nanos - account.purchased_window_nanos),
                         cents_to_nanos(STRIPE_MINIMUM_CHARGE_CENTS))
            spent = month_spent_nanos(account_id=account_id, purpose=Purpose.AUTO_SCALE, now=now)
            if spent + amount > profile.auto_scale_max_monthly_nanos:
                return False
            # Numbered per account under the profile lock: the same decision, retried, has
            # the same key; the next decision has the next one.
            number = mine.count() + 1
            payment = Payment.objects.create(
                account_id=account_id, purpose=Purpose.AUTO_SCALE, amount_nanos=amount,
                card=card, idempotency_key=f"auto-scale:{account_id}:{number}",
                claimed_until=_claim_until(now), created_at=now, updated_at=now)
            customer_id = profile.stripe_customer_id
    if in_flight is not None:
        return _payment_wait(payment_id=in_flight.id).status == Status.SUCCEEDED
    try:
        payment = _charge_off_session(payment=payment, customer_id=customer_id,
                                      payment_method_id=card.stripe_payment_method_id, now=now)
    except StripeGatewayError:
        logger.warning("auto-scale payment %s: Stripe unavailable", payment.id)
        return False
    return payment.status == Status.SUCCEEDED


def _payment_wait(*, payment_id: UUID) -> Payment:
    deadline = time.monotonic() + settings.AUTO_SCALE_WAIT_SECONDS
    while True:
        payment = Payment.objects.get(id=payment_id)
        if payment.status not in Payment.IN_FLIGHT or time.monotonic() >= deadline:
            return payment
        time.sleep(0.05)
