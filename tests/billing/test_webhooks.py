"""The Stripe webhook endpoint: signatures, storing events once, processing them once, and
racing the customer's own confirmation. Deliveries are localstripe's own (recorded and
replayed byte for byte) unless localstripe never sends that event type."""

import json
import threading
import time

import pytest
import requests

from billing.models import Card, CreditLot, Payment, Purchase, StripeEvent
from tests.billing.conftest import (
    browser_confirms_setup,
    deliver,
    event_payload,
    signed,
)

USD = 10**9

pytestmark = pytest.mark.usefixtures("stripe_live")


def _unconfirmed_purchase(customer, save_card, amount="20.00"):
    save_card(customer)
    created = customer.api.post("/api/v1/purchases", {"amount_usd": amount, "confirm": False},
                                format="json")
    assert created.status_code == 201, created.content
    return created.data


def _paid_in_the_browser(stripe_client, stripe_live, purchase) -> dict:
    """The browser confirms the payment; returns Stripe's delivery of the success."""
    stripe_client.v1.payment_intents.confirm(purchase["payment_intent_id"])
    return stripe_live.wait_for("payment_intent.succeeded", purchase["payment_intent_id"])


def _concurrently(calls):
    barrier = threading.Barrier(len(calls))
    results = [None] * len(calls)

    def run(index, call):
        barrier.wait()
        results[index] = call()

    threads = [threading.Thread(target=run, args=(i, c)) for i, c in enumerate(calls)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


@pytest.mark.usefixtures("service_webhook_paused")
@pytest.mark.figure(6, tried="the same delivery 20 times at once", counts="one grant")
def test_the_same_webhook_delivered_twenty_times_at_once_grants_once(
        make_customer, save_card, stripe_client, stripe_live, service_webhook_url):
    # Given a purchase paid in the browser, whose success Stripe reports by webhook
    customer = make_customer()
    purchase = _unconfirmed_purchase(customer, save_card)
    delivery = _paid_in_the_browser(stripe_client, stripe_live, purchase)

    # When the same delivery reaches the service 20 times at once
    responses = _concurrently([
        lambda: deliver(service_webhook_url, delivery["body"], delivery["signature"])
        for _ in range(20)])

    # Then every delivery is acknowledged, and the event is stored and applied once
    assert [r.status_code for r in responses] == [200] * 20
    event = StripeEvent.objects.get(stripe_id=delivery["event"]["id"])
    assert event.attempts == 1 and event.processed_at is not None
    [lot] = CreditLot.objects.filter(account=customer.account,
                                     source=CreditLot.Source.PURCHASE)
    assert lot.amount_nanos == 20 * USD
    assert Purchase.objects.filter(account=customer.account).count() == 1
    assert Payment.objects.get(id=purchase["payment_id"]).status == "succeeded"


@pytest.mark.usefixtures("service_webhook_paused")
def test_confirmation_racing_the_webhook_grants_once(
        make_customer, save_card, stripe_client, stripe_live, service_webhook_url,
        live_server):
    # Given a purchase paid in the browser
    customer = make_customer()
    purchase = _unconfirmed_purchase(customer, save_card, amount="30.00")
    delivery = _paid_in_the_browser(stripe_client, stripe_live, purchase)
    confirm_url = f"{live_server.url}/api/v1/purchases/{purchase['payment_id']}/confirm"

    # When the dashboard's confirmation calls and Stripe's deliveries arrive all at once
    def confirm():
        return requests.post(confirm_url, timeout=30,
                             headers={"Authorization": f"Bearer {customer.management_key}"})

    def webhook():
        return deliver(service_webhook_url, delivery["body"], delivery["signature"])

    responses = _concurrently([confirm, webhook] * 10)

    # Then all succeed and the purchase is written once
    assert [r.status_code for r in responses] == [200] * 20, [r.text for r in responses]
    assert {r.json().get("status") for r in responses[::2]} == {"succeeded"}
    assert Purchase.objects.filter(account=customer.account).count() == 1
    assert CreditLot.objects.filter(account=customer.account,
                                    source=CreditLot.Source.PURCHASE).count() == 1
    assert StripeEvent.objects.get(stripe_id=delivery["event"]["id"]).attempts == 1


@pytest.mark.usefixtures("service_webhook_paused")
@pytest.mark.figure(6, tried="a genuine delivery forged (other secret), tampered (amount), "
                    "stale (301 s), unsigned, garbage header",
                    counts="5 refused 400 invalid_signature, nothing written; then genuine ok")
@pytest.mark.figure(12, tried="webhook endpoint: unsigned, garbage, forged, tampered, stale",
                    counts="all refused 400 invalid_signature, nothing written")
def test_forged_tampered_and_stale_deliveries_are_refused_and_write_nothing(
        make_customer, save_card, stripe_client, stripe_live, service_webhook_url):
    # Given Stripe's genuine delivery of a payment's success
    customer = make_customer()
    purchase = _unconfirmed_purchase(customer, save_card)
    delivery = _paid_in_the_browser(stripe_client, stripe_live, purchase)
    body, event = delivery["body"], delivery["event"]
    tampered = json.loads(body)
    tampered["data"]["object"]["amount"] = 999_999
    tampered = json.dumps(tampered).encode()

    # When it arrives forged, tampered with, stale, or unsigned
    refused = {
        "forged": deliver(service_webhook_url, body, signed(body, secret="whsec_not_ours")),
        "tampered": deliver(service_webhook_url, tampered, delivery["signature"]),
        "stale": deliver(service_webhook_url, body,
                         signed(body, timestamp=int(time.time()) - 301)),
        "unsigned": deliver(service_webhook_url, body, ""),
        "garbage header": deliver(service_webhook_url, body, "t=abc,v1="),
    }

    # Then each is refused with 400 in the contract's error shape, and nothing is written
    for name, response in refused.items():
        assert response.status_code == 400, name
        assert response.json()["code"] == "invalid_signature", name
        assert response.json()["error"] == "Bad Request", name
    assert not StripeEvent.objects.filter(stripe_id=event["id"]).exists()
    assert not Purchase.objects.filter(account=customer.account).exists()
    assert Payment.objects.get(id=purchase["payment_id"]).status == "requires_action"

    # And the genuine delivery still goes through (the refusals were about the signature)
    assert deliver(service_webhook_url, body, delivery["signature"]).status_code == 200
    assert Purchase.objects.filter(account=customer.account).count() == 1


def test_a_signed_body_that_is_not_an_event_is_refused(client, settings, stripe_live):
    body = b'{"not": "an event"}'

    response = client.post("/stripe/webhook", data=body, content_type="application/json",
                           HTTP_STRIPE_SIGNATURE=signed(body))

    assert response.status_code == 400
    assert response.json()["code"] == "invalid_request"
    assert not StripeEvent.objects.exists()


def test_an_event_type_the_service_does_not_handle_is_stored_and_acknowledged(
        client, stripe_live):
    body = event_payload("customer.created", {"id": "cus_nobody", "object": "customer"})

    response = client.post("/stripe/webhook", data=body, content_type="application/json",
                           HTTP_STRIPE_SIGNATURE=signed(body))

    assert response.status_code == 200
    event = StripeEvent.objects.get()
    assert (event.type, event.outcome) == ("customer.created", "ignored: event type not handled")


def test_setup_intent_succeeded_saves_the_card_once_whoever_reports_it_first(
        make_customer, stripe_client, localstripe_url, service_webhook_url):
    # Given a SetupIntent confirmed in the browser, not yet saved by the dashboard
    customer = make_customer()
    setup = customer.api.post("/api/v1/cards/setup-intents").data
    assert browser_confirms_setup(localstripe_url, setup["setup_intent_id"],
                                  setup["client_secret"], "4242424242424242").ok
    intent = stripe_client.v1.setup_intents.retrieve(setup["setup_intent_id"]).to_dict()

    # When Stripe reports setup_intent.succeeded (localstripe does not send it: the event is
    # built from localstripe's own SetupIntent and signed with the signing secret), twice
    body = event_payload("setup_intent.succeeded", intent)
    first = deliver(service_webhook_url, body)
    second = deliver(service_webhook_url, body)
    # and then the dashboard saves the same card
    saved = customer.api.post("/api/v1/cards", {"setup_intent_id": setup["setup_intent_id"]},
                              format="json")

    # Then there is one card, the default
    assert (first.status_code, second.status_code, saved.status_code) == (200, 200, 201)
    card = Card.objects.get(account=customer.account)
    assert saved.data["id"] == str(card.id) and saved.data["default"] is True
    assert first.json()["outcome"] == f"card {card.id} saved"


def test_an_event_that_fails_is_kept_unprocessed_and_applied_when_delivered_again(
        make_customer, stripe_client, localstripe_url, service_webhook_url, settings):
    # Given a card set up in the browser, and Stripe unreachable from the service
    customer = make_customer()
    setup = customer.api.post("/api/v1/cards/setup-intents").data
    browser_confirms_setup(localstripe_url, setup["setup_intent_id"], setup["client_secret"],
                           "4242424242424242")
    body = event_payload("setup_intent.succeeded", stripe_client.v1.setup_intents.retrieve(
        setup["setup_intent_id"]).to_dict())
    settings.STRIPE_API_BASE = "http://127.0.0.1:9"

    # When setup_intent.succeeded arrives, the service cannot read the card from Stripe
    failed = deliver(service_webhook_url, body)

    # Then Stripe is asked to deliver it again, the event is stored, and nothing is applied
    assert failed.status_code == 500 and failed.json()["code"] == "processing_failed"
    event = StripeEvent.objects.get(stripe_id=json.loads(body)["id"])
    assert (event.processed_at, event.attempts) == (None, 1)
    assert "StripeUnavailable" in event.last_error
    assert not Card.objects.filter(account=customer.account).exists()

    # When Stripe delivers it again and Stripe is reachable, it is applied
    settings.STRIPE_API_BASE = localstripe_url
    assert deliver(service_webhook_url, body).status_code == 200
    event.refresh_from_db()
    assert event.processed_at is not None and event.attempts == 2 and event.last_error == ""
    assert Card.objects.filter(account=customer.account).count() == 1
