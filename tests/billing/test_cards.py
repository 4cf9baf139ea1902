"""Stripe customers and saved cards; and a Checkout purchase (localstripe has no Checkout
Sessions: only the session is made by a stand-in gateway, the payment is localstripe's)."""

import threading
import uuid

import pytest
from django.db import connection

from billing.cards import stripe_customer_ensure
from billing.models import BillingProfile, Card, Payment, Purchase
from billing.stripe_gateway import CheckoutSessionState, StripeGateway
from tests.billing.conftest import deliver, event_payload

pytestmark = pytest.mark.usefixtures("stripe_live")


def _stripe_customer(customer) -> str:
    return BillingProfile.objects.get(account_id=customer.id).stripe_customer_id


def test_concurrent_first_uses_create_one_stripe_customer(make_customer, stripe_client):
    customer = make_customer()
    barrier = threading.Barrier(10)
    results = []

    def first_use():
        try:
            barrier.wait()
            results.append(stripe_customer_ensure(account_id=customer.id))
        finally:
            connection.close()

    threads = [threading.Thread(target=first_use) for _ in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert len(set(results)) == 1 and len(results) == 10
    at_stripe = stripe_client.v1.customers.list(
        params={"email": customer.account.user.email}).data
    assert [c.id for c in at_stripe] == results[:1]


def test_cards_are_listed_made_default_and_removed(make_customer, save_card, stripe_client):
    # Given two saved cards: the first is the default
    customer = make_customer()
    first = save_card(customer, "4242424242424242").data
    second = save_card(customer, "5555555555554444").data
    assert [(c["id"], c["default"]) for c in customer.api.get("/api/v1/cards").data] == [
        (first["id"], True), (second["id"], False)]

    # When the second is made the default
    made_default = customer.api.post(f"/api/v1/cards/{second['id']}/default")

    # Then it is, here and at Stripe
    assert made_default.status_code == 200 and made_default.data["default"] is True
    second_pm = Card.objects.get(id=second["id"]).stripe_payment_method_id
    stripe_customer = stripe_client.v1.customers.retrieve(_stripe_customer(customer))
    assert stripe_customer.invoice_settings.default_payment_method == second_pm

    # When the default card is removed
    removed = customer.api.delete(f"/api/v1/cards/{second['id']}")

    # Then it is detached at Stripe and the remaining card is the default again
    assert removed.status_code == 204
    assert stripe_client.v1.payment_methods.retrieve(second_pm).customer is None
    assert [(c["id"], c["default"]) for c in customer.api.get("/api/v1/cards").data] == [
        (first["id"], True)]
    first_pm = Card.objects.get(id=first["id"]).stripe_payment_method_id
    stripe_customer = stripe_client.v1.customers.retrieve(_stripe_customer(customer))
    assert stripe_customer.invoice_settings.default_payment_method == first_pm


def test_someone_elses_card_or_no_card_is_not_found(make_customer, save_card):
    customer, other = make_customer(), make_customer()
    others_card = save_card(other).data

    responses = [customer.api.delete(f"/api/v1/cards/{others_card['id']}"),
                 customer.api.post(f"/api/v1/cards/{others_card['id']}/default"),
                 customer.api.delete("/api/v1/cards/not-a-card"),
                 customer.api.post("/api/v1/purchases", {"amount_usd": "5.00",
                                                         "card_id": others_card["id"]},
                                   format="json")]

    assert [(r.status_code, r.json()["code"]) for r in responses] == [
        (404, "card_not_found")] * 4
    assert Card.objects.get(id=others_card["id"]).removed_at is None
    assert not Payment.objects.filter(account_id=customer.id).exists()


class CheckoutOnLocalstripe(StripeGateway):
    """localstripe has no Checkout Sessions: this stands in for the session only."""

    sessions: dict[str, dict] = {}

    def checkout_session_create(self, *, amount_cents, customer_id, success_url, cancel_url,
                                metadata, idempotency_key):
        session_id = f"cs_test_{uuid.uuid4().hex}"
        self.sessions[session_id] = {"amount": amount_cents, "customer": customer_id,
                                     "metadata": metadata}
        return CheckoutSessionState(
            id=session_id, url=f"https://checkout.stripe.test/pay/{session_id}", status="open",
            payment_status="unpaid", payment_intent_id=None, amount_total_cents=amount_cents,
            metadata=metadata)


def test_a_checkout_purchase_is_recorded_once_when_its_payment_succeeds(
        make_customer, settings, stripe_client, stripe_live, service_webhook_url):
    settings.BILLING_STRIPE_GATEWAY = f"{__name__}.CheckoutOnLocalstripe"
    customer = make_customer()

    # When the customer starts a Checkout purchase of $15
    started = customer.api.post("/api/v1/purchases/checkout", {
        "amount_usd": "15.00", "success_url": "https://app.test/ok",
        "cancel_url": "https://app.test/cancel"}, format="json")
    assert started.status_code == 201, started.content
    session_id = Payment.objects.get(id=started.data["payment_id"]).stripe_checkout_session_id
    assert started.data["checkout_url"].endswith(session_id)
    session = CheckoutOnLocalstripe.sessions[session_id]

    # and pays on the Checkout page (Stripe makes and confirms the PaymentIntent, with the
    # session's metadata)
    card = stripe_client.v1.payment_methods.create(params={"type": "card", "card": {
        "number": "4242424242424242", "exp_month": 12, "exp_year": 2034, "cvc": "123"}})
    intent = stripe_client.v1.payment_intents.create(params={
        "amount": session["amount"], "currency": "usd", "customer": session["customer"],
        "payment_method": card.id, "metadata": session["metadata"], "confirm": True})
    stripe_live.wait_for("payment_intent.succeeded", intent.id)
    # and Stripe also reports the session completed
    completed = event_payload("checkout.session.completed", {
        "id": session_id, "object": "checkout.session", "payment_status": "paid",
        "status": "complete", "payment_intent": intent.id, "amount_total": 1500,
        "metadata": session["metadata"]})
    assert deliver(service_webhook_url, completed).status_code == 200

    # Then the purchase is recorded once, from the payment that succeeded
    [purchase] = Purchase.objects.filter(account_id=customer.id)
    assert (purchase.reference, purchase.amount_nanos) == (intent.id, 15 * 10**9)
    assert Payment.objects.get(id=started.data["payment_id"]).status == "succeeded"
