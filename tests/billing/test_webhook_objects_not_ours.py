"""Signed events that can never apply are acknowledged, not answered 500 for days: an
object Stripe itself no longer knows, a checkout that is not ours, a refund that waited
longer than any purchase takes to arrive. And a dispute in the current API's shape (it
names its PaymentIntent) on a charge that is no purchase still suspends the account of the
charge's customer. A payment in another currency is never credited as dollars."""

import json
import time
from datetime import timedelta

import pytest

from accounts.models import Account
from billing.models import BillingProfile, Card, CreditLot, Dispute, Payment, Reversal, StripeEvent
from tests.billing.conftest import deliver, event_payload

pytestmark = pytest.mark.usefixtures("stripe_live")


def _processed(body: bytes) -> StripeEvent:
    return StripeEvent.objects.get(stripe_id=json.loads(body)["id"])


def _charge_outside_the_service(customer, save_card, stripe_client, cents=700):
    """Staff charge the customer's saved card from Stripe's dashboard: a charge of our
    customer that is no purchase of the service."""
    save_card(customer)
    profile = BillingProfile.objects.get(account_id=customer.id)
    card = Card.objects.get(account_id=customer.id)
    intent = stripe_client.v1.payment_intents.create(params={
        "amount": cents, "currency": "usd", "customer": profile.stripe_customer_id,
        "payment_method": card.stripe_payment_method_id, "confirm": True,
        "off_session": True})
    charge = intent.latest_charge
    return intent.id, charge if isinstance(charge, str) else charge.id


def test_a_dispute_on_a_charge_stripe_does_not_know_is_acknowledged_once(
        make_customer, service_webhook_url):
    customer = make_customer()
    dispute = {"id": "du_gone", "object": "dispute", "amount": 500, "currency": "usd",
               "charge": "ch_does_not_exist", "payment_intent": "pi_does_not_exist",
               "reason": "fraudulent", "status": "needs_response"}
    body = event_payload("charge.dispute.created", dispute)

    # When Stripe delivers it (and again)
    first, second = deliver(service_webhook_url, body), deliver(service_webhook_url, body)

    # Then both are acknowledged, the event is done with, and nothing changed
    assert (first.status_code, second.status_code) == (200, 200)
    event = _processed(body)
    assert event.processed_at is not None and event.attempts == 1
    assert event.outcome == "ignored: Stripe does not know charge ch_does_not_exist"
    assert not Dispute.objects.exists()
    assert Account.objects.get(id=customer.id).status == "active"


def test_a_paid_checkout_that_is_not_ours_is_acknowledged_without_asking_stripe(
        service_webhook_url):
    session = {"id": "cs_not_ours", "object": "checkout.session", "payment_status": "paid",
               "payment_intent": "pi_does_not_exist", "status": "complete",
               "amount_total": 1000, "currency": "usd"}
    body = event_payload("checkout.session.completed", session)

    response = deliver(service_webhook_url, body)

    assert response.status_code == 200, response.content
    assert _processed(body).outcome == "ignored: not a checkout of ours"
    assert not Payment.objects.exists()


def test_a_refund_of_a_charge_that_is_no_purchase_waits_then_is_acknowledged(
        make_customer, save_card, stripe_client, service_webhook_url):
    # Given a charge of our customer that the service never sold
    customer = make_customer()
    _, charge_id = _charge_outside_the_service(customer, save_card, stripe_client)
    charge = stripe_client.v1.charges.retrieve(charge_id).to_dict()

    # When its refund arrives just after it happened, the event waits for a purchase
    recent = event_payload("charge.refunded", charge)
    assert deliver(service_webhook_url, recent).status_code == 500
    assert _processed(recent).processed_at is None

    # When one arrives a day and more after it happened, it is acknowledged as not ours
    old = event_payload("charge.refunded", charge,
                        created=int(time.time() - timedelta(hours=25).total_seconds()))
    response = deliver(service_webhook_url, old)
    assert response.status_code == 200, response.content
    assert _processed(old).processed_at is not None
    assert not Reversal.objects.exists()
    assert CreditLot.objects.filter(account_id=customer.id).count() == 1  # the free grant


def test_a_dispute_naming_its_payment_intent_on_a_charge_that_is_no_purchase_suspends(
        make_customer, save_card, stripe_client, service_webhook_url):
    # Given a charge of our customer that the service never sold
    customer = make_customer()
    intent_id, charge_id = _charge_outside_the_service(customer, save_card, stripe_client)

    # When the cardholder disputes it (the current API names the PaymentIntent)
    body = event_payload("charge.dispute.created", {
        "id": "du_manual", "object": "dispute", "amount": 700, "currency": "usd",
        "charge": charge_id, "payment_intent": intent_id, "reason": "fraudulent",
        "status": "needs_response"})
    response = deliver(service_webhook_url, body)

    # Then the account of the charge's customer is suspended, and no credit moves
    assert response.status_code == 200, response.content
    account = Account.objects.get(id=customer.id)
    assert account.status == "suspended"
    assert account.status_reason.startswith("Payment dispute du_manual")
    assert Dispute.objects.get().purchase_id is None
    assert not Reversal.objects.exists()


def test_a_success_in_another_currency_is_never_credited(make_customer, save_card,
                                                         stripe_client, service_webhook_url):
    # Given a purchase the customer has not paid yet
    customer = make_customer()
    save_card(customer)
    created = customer.api.post("/api/v1/purchases", {"amount_usd": "20.00",
                                                      "confirm": False}, format="json")
    assert created.status_code == 201, created.content
    intent = stripe_client.v1.payment_intents.retrieve(
        created.data["payment_intent_id"]).to_dict()

    # When an event reports its success, in euros
    intent.update(status="succeeded", amount_received=intent["amount"], currency="eur")
    response = deliver(service_webhook_url,
                       event_payload("payment_intent.succeeded", intent))

    # Then nothing is credited and the payment says why
    assert response.status_code == 200, response.content
    payment = Payment.objects.get(id=created.data["payment_id"])
    assert (payment.status, payment.failure_code) == ("failed", "currency_mismatch")
    assert CreditLot.objects.filter(account_id=customer.id).count() == 1  # the free grant
