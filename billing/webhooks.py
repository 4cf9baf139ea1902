"""Stripe webhooks: `POST /stripe/webhook`.

1. The `Stripe-Signature` header is verified on the raw body, with the signing secret and
   a timestamp tolerance. A forged signature, a tampered body or a stale timestamp gets a
   400 and nothing is written.
2. The event is stored by its Stripe id (unique) before anything else is done with it.
3. It is processed once: one transaction locks the stored event, applies it and marks it
   processed, so a redelivery, or the same event delivered many times at once, does
   nothing more. What a handler needs to read from Stripe it reads first, outside that
   transaction. A handler that fails leaves the event unprocessed and answers 500, so
   Stripe delivers it again.

Every handler is correct whatever order events arrive in: purchases are recorded once by
reference, refunds and disputes once by their Stripe id, and subscription and dispute
states never go back to older news (see the services they call).
"""

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import stripe
from django.conf import settings
from django.db import transaction
from django.db.models import F
from django.http import JsonResponse
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from billing import refunds, subscriptions
from billing.cards import account_for_stripe_customer, card_record
from billing.models import Card, Payment, StripeEvent, Subscription
from billing.payment_outcomes import payment_outcome_apply
from billing.purchases import payment_intent_event_apply, payment_intent_sync
from billing.stripe_gateway import (
    ChargeState,
    CheckoutSessionState,
    DisputeState,
    IntentState,
    InvoiceState,
    SetupIntentState,
    StripeObjectMissing,
    SubscriptionState,
    stripe_gateway,
)
from config.api import ApplicationError, application_error_response

logger = logging.getLogger(__name__)


class WebhookRefused(ApplicationError):
    code = "invalid_signature"
    message = "Webhook refused."


class WebhookProcessingFailed(ApplicationError):
    status = 500
    code = "processing_failed"
    message = "The event was stored but could not be processed; deliver it again."


class WebhookPayloadInvalid(WebhookRefused):
    code = "invalid_request"


def stripe_event_receive(*, payload: bytes, signature: str,
                         now: datetime | None = None) -> StripeEvent:
    """Verify a delivery and store its event (once). Raises WebhookRefused, having
    written nothing, when the delivery is not authentic or not recent."""
    now = now or timezone.now()
    secret = settings.STRIPE_WEBHOOK_SECRET
    if not secret:
        raise WebhookRefused("no webhook signing secret is configured")
    try:
        stripe.WebhookSignature.verify_header(
            payload, signature, secret, tolerance=settings.STRIPE_WEBHOOK_TOLERANCE_SECONDS)
    except (stripe.SignatureVerificationError, UnicodeDecodeError) as exc:
        raise WebhookRefused(str(exc)) from None
    try:
        data = json.loads(payload)
        event_id, event_type = str(data["id"]), str(data["type"])
        created_at = datetime.fromtimestamp(int(data["created"]), tz=UTC)
        if not isinstance(data["data"]["object"], dict):
            raise TypeError("data.object is not an object")
    except (ValueError, KeyError, TypeError) as exc:
        raise WebhookPayloadInvalid(f"not a Stripe event: {exc}") from None
    StripeEvent.objects.bulk_create([StripeEvent(
        stripe_id=event_id, type=event_type, payload=data, created_at=created_at,
        received_at=now)], ignore_conflicts=True)
    return StripeEvent.objects.get(stripe_id=event_id)


# --- Handlers: prepare (reads Stripe, no writes) and apply (inside the event's transaction) --


@dataclass(frozen=True, slots=True)
class Handler:
    apply: Callable[[dict, Any, datetime, datetime], str]
    prepare: Callable[[dict, datetime, datetime], Any] | None = None


@dataclass(frozen=True, slots=True)
class Missing:
    """Stripe no longer knows an object the event names: nothing can ever be done with
    the event, so it is acknowledged (a 404 is permanent; redelivery changes nothing)."""

    what: str

    def outcome(self) -> str:
        return f"ignored: Stripe does not know {self.what}"


def _intent_apply(obj, prepared, event_at, now) -> str:
    return payment_intent_event_apply(intent=IntentState.parse(obj), now=now)


def _setup_intent_prepare(obj, event_at, now):
    setup = SetupIntentState.parse(obj)
    account_id = account_for_stripe_customer(setup.customer_id)
    if account_id is None or not setup.payment_method_id or setup.status != "succeeded":
        return None
    if Card.objects.filter(stripe_payment_method_id=setup.payment_method_id).exists():
        return None  # saved already (or removed since: it stays removed)
    gateway = stripe_gateway()
    details = gateway.payment_method_retrieve(setup.payment_method_id)
    if details.customer_id is None:  # the local test server does not attach on confirm
        details = gateway.payment_method_attach(payment_method_id=details.payment_method_id,
                                                customer_id=setup.customer_id)
    if details.customer_id != setup.customer_id:
        return None
    return account_id, details


def _setup_intent_apply(obj, prepared, event_at, now) -> str:
    if prepared is None:
        return "ignored: nothing to save"
    account_id, details = prepared
    card = card_record(account_id=account_id, details=details, now=now)
    return f"card {card.id} saved"


def _invoice_prepare(obj, event_at, now) -> tuple[InvoiceState, str | None]:
    invoice = InvoiceState.parse(obj)
    if not invoice.subscription_id or \
            account_for_stripe_customer(invoice.customer_id) is None:
        return invoice, None
    if invoice.payment_intent_id is None and invoice.status == "paid":
        # Since API version 2025-03-31 an invoice names its PaymentIntent only in its
        # payments, which events leave out: ask for them, so that a refund of this
        # invoice finds its purchase.
        invoice = stripe_gateway().invoice_retrieve(invoice.id)
    if Subscription.objects.filter(stripe_subscription_id=invoice.subscription_id).exists():
        return invoice, None
    if invoice.subscription_metadata.get("plan_code"):
        return invoice, invoice.subscription_metadata["plan_code"]
    state = stripe_gateway().subscription_retrieve(invoice.subscription_id)
    return invoice, subscriptions.plan_code_for(state)


def _invoice_paid_apply(obj, prepared, event_at, now) -> str:
    invoice, plan_code = prepared
    return subscriptions.invoice_paid_apply(invoice=invoice, plan_code=plan_code, now=now)


def _invoice_failed_apply(obj, prepared, event_at, now) -> str:
    return subscriptions.invoice_failed_apply(invoice=InvoiceState.parse(obj), now=now)


def _subscription_apply(obj, prepared, event_at, now) -> str:
    return subscriptions.subscription_state_apply(state=SubscriptionState.parse(obj),
                                                  event_at=event_at, now=now)


class PurchaseNotRecordedYet(Exception):
    """News about a payment of ours whose purchase is not recorded yet: the event stays
    unprocessed and Stripe delivers it again."""


def _purchase_recorded_ensure(*, payment_intent_id: str | None, customer_id: str | None,
                              charge_id: str, event_at: datetime, now: datetime) -> bool:
    """Before a refund or a lost dispute is applied, the purchase it takes back must be
    recorded; the news may arrive before the success it reverses. True when it is. A
    customer's event waits for its purchase (Stripe delivers it again) at most
    STRIPE_EVENT_PURCHASE_WAIT after it happened; then it is acknowledged as not ours."""
    if refunds.purchase_for_payment_intent(payment_intent_id) is not None:
        return True
    if payment_intent_id:
        try:
            payment_intent_sync(payment_intent_id=payment_intent_id)
        except StripeObjectMissing:
            return False
        if refunds.purchase_for_payment_intent(payment_intent_id) is not None:
            return True
    if account_for_stripe_customer(customer_id) is not None and \
            now - event_at < settings.STRIPE_EVENT_PURCHASE_WAIT:
        # A customer of ours (say, a plan invoice whose invoice.paid is still on its
        # way): never drop the reversal of money that may yet be credited.
        raise PurchaseNotRecordedYet(f"no purchase recorded yet for charge {charge_id}")
    return False


def _charge_refunded_prepare(obj, event_at, now):
    charge = ChargeState.parse(obj)
    if not _purchase_recorded_ensure(payment_intent_id=charge.payment_intent_id,
                                     customer_id=charge.customer_id, charge_id=charge.id,
                                     event_at=event_at, now=now):
        return charge, []
    listed = charge.refunds
    if listed is None:  # newer API versions leave the refunds out of the charge
        listed = stripe_gateway().refunds_for_charge(charge.id)
    return charge, list(listed)


def _charge_refunded_apply(obj, prepared, event_at, now) -> str:
    charge, listed = prepared
    return refunds.charge_refunds_apply(charge=charge, refunds=listed, now=now)


def _dispute_prepare(obj, event_at, now):
    """The charge behind a dispute, when the service needs it to know whose dispute it is:
    a dispute of no purchase of ours (staff charging a saved card from Stripe's dashboard,
    a manual invoice) still belongs to the charge's customer."""
    dispute = DisputeState.parse(obj)
    charge = None
    if refunds.purchase_for_payment_intent(dispute.payment_intent_id) is None \
            and dispute.charge_id:
        try:
            charge = stripe_gateway().charge_retrieve(dispute.charge_id)
        except StripeObjectMissing:
            return Missing(f"charge {dispute.charge_id}")
    if dispute.status == "lost":
        intent_id = dispute.payment_intent_id or (charge.payment_intent_id if charge else None)
        _purchase_recorded_ensure(payment_intent_id=intent_id,
                                  customer_id=charge.customer_id if charge else None,
                                  charge_id=dispute.charge_id or "", event_at=event_at,
                                  now=now)
    return charge


def _dispute_apply(obj, charge, event_at, now) -> str:
    if isinstance(charge, Missing):
        return charge.outcome()
    return refunds.dispute_apply(dispute=DisputeState.parse(obj), charge=charge,
                                 event_at=event_at, now=now)


def _checkout_prepare(obj, event_at, now):
    session = CheckoutSessionState.parse(obj)
    if session.payment_status != "paid" or not session.payment_intent_id or \
            not Payment.objects.filter(stripe_checkout_session_id=session.id).exists():
        return None  # nothing to read from Stripe: not paid, or not a checkout of ours
    try:
        return stripe_gateway().payment_intent_retrieve(session.payment_intent_id)
    except StripeObjectMissing:
        return Missing(f"PaymentIntent {session.payment_intent_id}")


def _checkout_apply(obj, intent, event_at, now) -> str:
    session = CheckoutSessionState.parse(obj)
    payment = Payment.objects.filter(stripe_checkout_session_id=session.id).first()
    if payment is None:
        return "ignored: not a checkout of ours"
    if isinstance(intent, Missing):
        return intent.outcome()
    if intent is None:
        return "ignored: not paid yet"
    payment = payment_outcome_apply(payment_id=payment.id, intent=intent, now=now)
    return f"payment {payment.id} {payment.status}"


_INTENT = Handler(apply=_intent_apply)
_INVOICE_PAID = Handler(prepare=_invoice_prepare, apply=_invoice_paid_apply)
_SUBSCRIPTION = Handler(apply=_subscription_apply)
_DISPUTE = Handler(prepare=_dispute_prepare, apply=_dispute_apply)
_CHECKOUT = Handler(prepare=_checkout_prepare, apply=_checkout_apply)

HANDLERS: dict[str, Handler] = {
    "payment_intent.succeeded": _INTENT,
    "payment_intent.payment_failed": _INTENT,
    "payment_intent.canceled": _INTENT,
    "payment_intent.processing": _INTENT,
    "payment_intent.requires_action": _INTENT,
    "setup_intent.succeeded": Handler(prepare=_setup_intent_prepare, apply=_setup_intent_apply),
    # Stripe sends both for a paid invoice; the purchase is recorded once.
    "invoice.paid": _INVOICE_PAID,
    "invoice.payment_succeeded": _INVOICE_PAID,
    "invoice.payment_failed": Handler(apply=_invoice_failed_apply),
    "customer.subscription.created": _SUBSCRIPTION,
    "customer.subscription.updated": _SUBSCRIPTION,
    "customer.subscription.deleted": _SUBSCRIPTION,
    "charge.refunded": Handler(prepare=_charge_refunded_prepare, apply=_charge_refunded_apply),
    "charge.dispute.created": _DISPUTE,
    "charge.dispute.updated": _DISPUTE,
    "charge.dispute.closed": _DISPUTE,
    "checkout.session.completed": _CHECKOUT,
    "checkout.session.async_payment_succeeded": _CHECKOUT,
}


def stripe_event_process(*, stripe_id: str, now: datetime | None = None) -> str:
    """Apply a stored event, once. Returns what it did."""
    now = now or timezone.now()
    event = StripeEvent.objects.get(stripe_id=stripe_id)
    if event.processed_at is not None:
        return event.outcome
    handler = HANDLERS.get(event.type)
    obj = event.payload["data"]["object"]
    try:
        prepared = (handler.prepare(obj, event.created_at, now)
                    if handler and handler.prepare else None)
        with transaction.atomic():
            locked = StripeEvent.objects.select_for_update().get(id=event.id)
            if locked.processed_at is not None:
                return locked.outcome
            outcome = (handler.apply(obj, prepared, event.created_at, now) if handler
                       else "ignored: event type not handled")
            StripeEvent.objects.filter(id=event.id).update(
                processed_at=now, outcome=outcome[:255], attempts=F("attempts") + 1,
                last_error="")
            return outcome
    except Exception as exc:
        StripeEvent.objects.filter(id=event.id).update(attempts=F("attempts") + 1,
                                                      last_error=repr(exc)[:4000])
        raise


@csrf_exempt
@require_POST
def stripe_webhook(request):
    try:
        event = stripe_event_receive(payload=request.body,
                                     signature=request.headers.get("Stripe-Signature", ""))
    except WebhookRefused as exc:
        logger.warning("Stripe webhook refused: %s", exc)
        return application_error_response(type(exc)(f"Webhook refused: {exc}"))
    try:
        outcome = stripe_event_process(stripe_id=event.stripe_id)
    except Exception:
        logger.exception("Stripe event %s (%s) failed", event.stripe_id, event.type)
        return application_error_response(WebhookProcessingFailed())
    return JsonResponse({"received": True, "id": event.stripe_id, "outcome": outcome})
