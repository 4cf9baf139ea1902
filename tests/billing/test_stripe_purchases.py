"""Buying credit with a card, on localstripe, with its webhooks delivered to the service."""

import pytest
import requests

from billing.models import Card, CreditLot, LedgerEntry, Payment, Purchase, StripeEvent
from tests.billing.conftest import (
    DECLINED_ON_CHARGE,
    DECLINED_ON_SAVE,
    GOOD_CARD,
    NEEDS_AUTHENTICATION,
    PUBLISHABLE_KEY,
    wait_until,
)

USD = 10**9

pytestmark = pytest.mark.usefixtures("stripe_live")


def _lots(account, source):
    return list(CreditLot.objects.filter(account=account, source=source))


def test_a_purchase_paid_with_a_good_card_grants_one_lot_and_unlocks_the_tier_at_once(
        make_customer, save_card, stripe_live, api, stripe_client):
    # Given a new customer (free credit only, lowest tier) with a good card saved
    customer = make_customer()
    assert customer.account.tier.name == "Tier 0"
    saved = save_card(customer, GOOD_CARD)
    assert saved.status_code == 201, saved.content
    assert saved.data["last4"] == "4242" and saved.data["default"] is True

    # When they buy $25 of credit with it
    response = customer.api.post("/api/v1/purchases", {"amount_usd": "25.00"}, format="json")

    # Then it is paid at once, one lot of $25 is written, and the tier rises at once
    assert response.status_code == 201, response.content
    assert response.data["status"] == "succeeded"
    assert response.data["amount_usd"] == "25.000000000"
    intent_id = response.data["payment_intent_id"]
    [lot] = _lots(customer.account, CreditLot.Source.PURCHASE)
    assert lot.amount_nanos == lot.remaining_nanos == 25 * USD
    purchase = Purchase.objects.get(account=customer.account)
    assert (purchase.kind, purchase.reference, purchase.amount_nanos) == (
        Purchase.Kind.STRIPE, intent_id, 25 * USD)
    assert sorted(LedgerEntry.objects.filter(transaction__memo=f"Purchase {intent_id}")
                  .values_list("book", "amount_nanos")) == [
        ("customer_credit", 25 * USD), ("stripe_cash", -25 * USD)]
    account = api.get(f"/internal/v1/accounts/{customer.id}").json()
    assert account["tier"] == {"name": "Tier 3", "max_params_b": 70, "concurrency": 10}
    assert account["balance_usd"] == "26.000000000"  # with the $1 of free credit

    # And when Stripe's payment_intent.succeeded webhook arrives too, nothing more is added
    stripe_live.wait_for("payment_intent.succeeded", intent_id)
    event = StripeEvent.objects.get(type="payment_intent.succeeded",
                                    payload__data__object__id=intent_id)
    assert event.processed_at is not None
    assert CreditLot.objects.filter(account=customer.account).count() == 2  # free + purchase
    assert Purchase.objects.filter(account=customer.account).count() == 1
    # Stripe charged the card once
    customer_id = customer.refresh().billing_profile.stripe_customer_id
    charges = stripe_client.v1.charges.list(params={"customer": customer_id})
    assert [c.amount for c in charges.data] == [2500]


def test_a_declined_card_grants_nothing_and_says_why(make_customer, save_card, stripe_live,
                                                     api):
    # Given a customer whose saved card is declined on every charge
    customer = make_customer()
    assert save_card(customer, DECLINED_ON_CHARGE).status_code == 201
    before = api.get(f"/internal/v1/accounts/{customer.id}").json()

    # When they try to buy credit
    response = customer.api.post("/api/v1/purchases", {"amount_usd": "10.00"}, format="json")

    # Then the payment fails with the reason, and no credit, purchase or ledger entry exists
    assert response.status_code == 402, response.content
    body = response.json()
    assert body["code"] == "payment_failed" and body["reason"] == "card_declined"
    assert body["message"] == "Your card was declined."
    payment = Payment.objects.get(id=body["payment_id"])
    assert payment.status == Payment.Status.FAILED and payment.purchase is None
    assert not Purchase.objects.filter(account=customer.account).exists()
    assert _lots(customer.account, CreditLot.Source.PURCHASE) == []
    after = api.get(f"/internal/v1/accounts/{customer.id}").json()
    assert (after["balance_usd"], after["tier"]) == (before["balance_usd"], before["tier"])

    # And the payment_failed webhook that follows changes nothing
    wait_until(lambda: StripeEvent.objects.filter(
        type="payment_intent.payment_failed", processed_at__isnull=False,
        payload__data__object__metadata__payment_id=str(payment.id)).exists())
    assert not Purchase.objects.filter(account=customer.account).exists()
    payment.refresh_from_db()
    assert payment.status == Payment.Status.FAILED


def test_a_card_declined_when_saved_is_not_saved(make_customer, save_card, stripe_live):
    customer = make_customer()

    response = save_card(customer, DECLINED_ON_SAVE)

    assert response.browser_status == 402  # Stripe.js shows the decline
    assert response.status_code == 400
    assert response.json()["code"] == "card_not_saved"
    assert not Card.objects.filter(account=customer.account).exists()


@pytest.mark.parametrize("amount, problem", [
    ("4.99", "Must be between 5.000000000 and 10000.000000000."),
    ("10000.01", "Must be between 5.000000000 and 10000.000000000."),
    ("5.001", "Must be a whole number of cents."),
    ("0", "Must be greater than zero."),
    (5, 'Must be a decimal string in US dollars, e.g. "10.00".'),
])
def test_a_purchase_outside_the_limits_is_refused_and_writes_nothing(
        make_customer, save_card, amount, problem):
    customer = make_customer()
    save_card(customer)

    response = customer.api.post("/api/v1/purchases", {"amount_usd": amount}, format="json")

    assert response.status_code == 400
    assert response.json() == {
        "status": 400, "error": "Bad Request", "code": "invalid_request",
        "message": "The request is invalid.", "fields": {"amount_usd": [problem]}}
    assert not Payment.objects.exists()
    assert not Purchase.objects.exists()


def test_a_purchase_confirmed_in_the_browser_is_recorded_when_the_customer_comes_back(
        make_customer, save_card, stripe_live, stripe_client):
    # Given a purchase created without confirming it (the browser will, with Stripe.js)
    customer = make_customer()
    save_card(customer)
    created = customer.api.post("/api/v1/purchases", {"amount_usd": "12.34", "confirm": False},
                                format="json")
    assert created.status_code == 201, created.content
    assert created.data["status"] == "requires_action"
    assert created.data["client_secret"].startswith(created.data["payment_intent_id"])
    assert not Purchase.objects.exists()

    # When the browser confirms it and the dashboard asks the service how it went
    stripe_client.v1.payment_intents.confirm(created.data["payment_intent_id"])
    confirmed = customer.api.post(f"/api/v1/purchases/{created.data['payment_id']}/confirm")

    # Then the purchase is recorded once, and asking again changes nothing
    assert confirmed.status_code == 200, confirmed.content
    assert confirmed.data["status"] == "succeeded"
    assert confirmed.data["purchase"]["amount_usd"] == "12.340000000"
    again = customer.api.post(f"/api/v1/purchases/{created.data['payment_id']}/confirm")
    assert again.data["status"] == "succeeded"
    assert Purchase.objects.get(account=customer.account).amount_nanos == 12_340_000_000
    listed = customer.api.get("/api/v1/purchases")
    assert [(p["kind"], p["amount_usd"], p["receipt"]["card"]) for p in listed.data] == [
        ("stripe", "12.340000000", "visa 4242")]


def test_a_payment_the_cardholder_fails_to_authenticate_is_explained_in_plain_words(
        make_customer, save_card, localstripe_url):
    # Given a purchase with a card whose bank asks the cardholder to authenticate it
    customer = make_customer()
    assert save_card(customer, NEEDS_AUTHENTICATION).status_code == 201
    created = customer.api.post("/api/v1/purchases", {"amount_usd": "10.00"}, format="json")
    assert created.status_code == 201, created.content
    assert created.data["status"] == "requires_action"
    intent_id = created.data["payment_intent_id"]

    # When the cardholder fails the bank's check (Stripe.js, in the browser), and the
    # dashboard asks the service how it went
    failed = requests.post(f"{localstripe_url}/v1/payment_intents/{intent_id}/_authenticate",
                           data={"key": PUBLISHABLE_KEY, "success": "false",
                                 "client_secret": created.data["client_secret"]}, timeout=10)
    assert failed.ok, failed.text
    confirmed = customer.api.post(f"/api/v1/purchases/{created.data['payment_id']}/confirm")

    # Then the answer says what happened in the customer's words, keeps Stripe's code, and
    # no credit was added
    assert confirmed.status_code == 402, confirmed.content
    body = confirmed.json()
    assert body["message"] == ("Your bank did not confirm the payment: the authentication "
                               "failed or was cancelled.")
    assert body["reason"] == "payment_intent_authentication_failure"
    payment = Payment.objects.get(id=created.data["payment_id"])
    assert (payment.status, payment.failure_code) == (
        Payment.Status.FAILED, "payment_intent_authentication_failure")
    assert "PaymentMethod" not in payment.failure_message
    assert not _lots(customer.account, "purchase")


def test_the_customer_api_needs_a_valid_key(anon_api, db):
    missing = anon_api.get("/api/v1/purchases")
    anon_api.credentials(HTTP_AUTHORIZATION="Bearer bk_nope_nope")
    wrong = anon_api.get("/api/v1/purchases")

    assert missing.status_code == 401 and missing.json()["code"] == "unauthorized"
    assert wrong.status_code == 401 and wrong.json()["code"] == "invalid_api_key"


# --- Idempotency-Key: a client that retries never pays twice ---------------------------------


def _charges(stripe_client, customer) -> list[int]:
    customer_id = customer.refresh().billing_profile.stripe_customer_id
    return [c.amount for c in stripe_client.v1.charges.list(
        params={"customer": customer_id}).data]


def test_a_purchase_asked_again_with_its_idempotency_key_is_the_first_one(
        make_customer, save_card, stripe_client):
    # Given a customer with a good card who buys $25 with an Idempotency-Key
    customer = make_customer()
    assert save_card(customer, GOOD_CARD).status_code == 201
    first = customer.api.post("/api/v1/purchases", {"amount_usd": "25.00"}, format="json",
                              HTTP_IDEMPOTENCY_KEY="order-7f3a")
    assert first.status_code == 201, first.content

    # When the client, having lost the answer, asks again with the same key
    again = customer.api.post("/api/v1/purchases", {"amount_usd": "25.00"}, format="json",
                              HTTP_IDEMPOTENCY_KEY="order-7f3a")

    # Then it is told about the first purchase (200), and the card was charged once
    assert again.status_code == 200, again.content
    assert (again.data["payment_id"], again.data["status"]) == (first.data["payment_id"],
                                                                "succeeded")
    assert _charges(stripe_client, customer) == [2500]
    assert len(_lots(customer.account, CreditLot.Source.PURCHASE)) == 1

    # And another key is another purchase
    other = customer.api.post("/api/v1/purchases", {"amount_usd": "25.00"}, format="json",
                              HTTP_IDEMPOTENCY_KEY="order-8b1c")
    assert other.status_code == 201
    assert sorted(_charges(stripe_client, customer)) == [2500, 2500]


def test_an_idempotency_key_reused_for_another_amount_is_refused_and_charges_nothing(
        make_customer, save_card, stripe_client):
    customer = make_customer()
    assert save_card(customer, GOOD_CARD).status_code == 201
    assert customer.api.post("/api/v1/purchases", {"amount_usd": "25.00"}, format="json",
                             HTTP_IDEMPOTENCY_KEY="order-1").status_code == 201
    payments_before = Payment.objects.filter(account=customer.account).count()

    response = customer.api.post("/api/v1/purchases", {"amount_usd": "50.00"}, format="json",
                                 HTTP_IDEMPOTENCY_KEY="order-1")

    assert response.status_code == 409, response.content
    assert response.json()["code"] == "idempotency_key_reused"
    assert _charges(stripe_client, customer) == [2500]
    assert Payment.objects.filter(account=customer.account).count() == payments_before


@pytest.mark.parametrize("key", ["with space", "x" * 201, "", "caf\u00e9"])
def test_a_malformed_idempotency_key_is_400_and_writes_nothing(make_customer, save_card, key):
    customer = make_customer()
    assert save_card(customer, GOOD_CARD).status_code == 201
    payments_before = Payment.objects.count()

    response = customer.api.post("/api/v1/purchases", {"amount_usd": "25.00"}, format="json",
                                 HTTP_IDEMPOTENCY_KEY=key)

    assert response.status_code == 400, response.content
    assert response.json()["code"] == "invalid_request"
    assert "Idempotency-Key" in response.json()["fields"]
    assert Payment.objects.count() == payments_before


def test_racing_retries_with_one_idempotency_key_charge_once(make_customer, save_card,
                                                             stripe_client):
    from rest_framework.test import APIClient

    from tests.support import run_concurrently

    # Given a customer with a good card
    customer = make_customer()
    assert save_card(customer, GOOD_CARD).status_code == 201

    # When 6 copies of one purchase, with one key, arrive at once
    def buy():
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {customer.management_key}")
        return client.post("/api/v1/purchases", {"amount_usd": "25.00"}, format="json",
                           HTTP_IDEMPOTENCY_KEY="burst-1")

    answers = run_concurrently([buy] * 6)

    # Then one made it (201), the others were told about it or to ask again (200 / 409),
    # and the card was charged once
    statuses = sorted(answer.status_code for answer in answers)
    assert statuses.count(201) == 1, statuses
    assert set(statuses) <= {200, 201, 409}, [a.content for a in answers]
    assert _charges(stripe_client, customer) == [2500]
    assert Payment.objects.filter(account=customer.account).count() == 1
