"""The pay-as-you-go plan on a Stripe subscription (localstripe's legacy plans stand in
for a Price; it sends customer.subscription.created/deleted and
invoice.payment_succeeded itself; invoice.paid and subscription updates are built from
its own objects)."""

import json
import time
import uuid

import pytest

from accounts.models import Account
from billing.models import CreditLot, Purchase, Reversal, StripeEvent, Subscription
from tests.billing.conftest import (
    deliver,
    event_payload,
    subscription_made_at_stripe,
    wait_until,
)
from tests.support import account_state, assert_books_agree, db_counts

USD = 10**9

pytestmark = pytest.mark.usefixtures("stripe_live")


def _account(customer) -> Account:
    return Account.objects.select_related("plan", "tier").get(id=customer.id)


def _subscribed(customer, save_card):
    assert save_card(customer).status_code == 201
    response = customer.api.post("/api/v1/subscription", {"plan": "payg"}, format="json")
    assert response.status_code == 201, response.content
    return response.data


@pytest.mark.usefixtures("payg_price")
def test_subscribing_switches_the_plan_and_each_paid_invoice_grants_once(
        make_customer, save_card, stripe_live, stripe_client, service_webhook_url):
    # Given a customer on the free plan (closed models limited to 10 requests/s)
    customer = make_customer()
    assert _account(customer).plan.closed_requests_per_second == 10

    # When they subscribe to pay-as-you-go
    subscription = _subscribed(customer, save_card)

    # Then they are on it at once (no closed-model request limit), with $5 of credit for the
    # $3 paid, which counts as purchased
    assert subscription["plan"] == "payg" and subscription["status"] == "active"
    account = _account(customer)
    assert (account.plan_id, account.plan.closed_requests_per_second) == ("payg", None)
    [purchase] = Purchase.objects.filter(account=account)
    assert (purchase.kind, purchase.amount_nanos, purchase.lot.amount_nanos,
            purchase.lot.source) == ("subscription", 3 * USD, 5 * USD, "plan_grant")
    assert (account.purchased_window_nanos, account.tier.name) == (3 * USD, "Tier 1")
    assert account.balance_nanos == 6 * USD
    invoice_id = purchase.reference

    # And when Stripe's own webhooks for it arrive, and invoice.paid is delivered twice more
    stripe_live.wait_for("invoice.payment_succeeded", invoice_id)
    invoice = stripe_client.v1.invoices.retrieve(invoice_id).to_dict()
    paid = event_payload("invoice.paid", invoice)
    assert deliver(service_webhook_url, paid).status_code == 200
    assert deliver(service_webhook_url, paid).status_code == 200
    # the grant is still the one
    assert Purchase.objects.filter(account=account).count() == 1

    # When the next month's invoice is paid
    renewal = event_payload("invoice.paid", {**invoice, "id": f"in_renewal_{uuid.uuid4().hex}"})
    assert deliver(service_webhook_url, renewal).json()["outcome"].startswith("plan credit")

    # Then it grants another $5 and counts another $3
    account = _account(customer)
    assert Purchase.objects.filter(account=account, kind="subscription").count() == 2
    assert (account.balance_nanos, account.purchased_window_nanos) == (11 * USD, 6 * USD)


@pytest.mark.usefixtures("payg_price")
def test_cancelling_now_returns_to_the_free_plan_and_stale_news_does_not_undo_it(
        make_customer, save_card, stripe_live, service_webhook_url, stripe_client):
    customer = make_customer()
    subscription = _subscribed(customer, save_card)
    before = int(time.time()) - 5
    active_state = stripe_client.v1.subscriptions.retrieve(
        subscription["subscription_id"]).to_dict()

    # When they cancel at once
    response = customer.api.delete("/api/v1/subscription", {"at_period_end": False},
                                   format="json")

    # Then they are back on the free plan; the credit already granted stays
    assert response.status_code == 200, response.content
    assert (response.data["plan"], response.data["status"]) == ("free", "canceled")
    assert _account(customer).plan_id == "free"
    assert CreditLot.objects.filter(account_id=customer.id, source="plan_grant").count() == 1

    # And when Stripe's customer.subscription.deleted arrives, and then an older "active"
    # update delivered late, the account stays on the free plan
    stripe_live.wait_for("customer.subscription.deleted", subscription["subscription_id"])
    stale = event_payload("customer.subscription.updated", active_state, created=before)
    assert deliver(service_webhook_url, stale).json()["outcome"].startswith("ignored")
    assert _account(customer).plan_id == "free"
    assert Subscription.objects.get().status == "canceled"


@pytest.mark.usefixtures("payg_price")
def test_cancelling_at_period_end_keeps_the_plan_until_the_subscription_ends(
        make_customer, save_card, service_webhook_url, stripe_client):
    customer = make_customer()
    subscription = _subscribed(customer, save_card)
    created_state = stripe_client.v1.subscriptions.retrieve(
        subscription["subscription_id"]).to_dict()

    response = customer.api.delete("/api/v1/subscription")

    assert response.status_code == 200
    assert (response.data["plan"], response.data["cancel_at_period_end"]) == ("payg", True)
    assert _account(customer).plan_id == "payg"
    # an older update (before the cancellation) delivered late does not undo it
    stale = event_payload("customer.subscription.updated", created_state,
                          created=int(time.time()) - 60)
    assert deliver(service_webhook_url, stale).json()["outcome"].startswith("ignored")
    assert Subscription.objects.get().cancel_at_period_end is True

    # When the period ends, Stripe deletes the subscription
    ended = {**stripe_client.v1.subscriptions.retrieve(
        subscription["subscription_id"]).to_dict(), "status": "canceled"}
    deliver(service_webhook_url, event_payload("customer.subscription.deleted", ended))

    assert _account(customer).plan_id == "free"
    assert customer.api.get("/api/v1/subscription").data["status"] == "canceled"


@pytest.mark.usefixtures("payg_price", "service_webhook_paused")
def test_the_invoice_paid_before_the_subscription_is_known_is_still_granted_once(
        make_customer, save_card, stripe_client, stripe_live, service_webhook_url,
        payg_price):
    # Given a subscription made at Stripe whose creation the service has not heard of yet
    # (its own call's answer was lost)
    customer = make_customer()
    created = subscription_made_at_stripe(customer, save_card, stripe_client, payg_price)
    invoice = stripe_client.v1.invoices.retrieve(created.latest_invoice).to_dict()
    created_delivery = stripe_live.wait_for("customer.subscription.created", created.id)

    # When invoice.paid arrives first, then the subscription's creation
    paid = deliver(service_webhook_url, event_payload("invoice.paid", invoice))
    deliver(service_webhook_url, created_delivery["body"], created_delivery["signature"])

    # Then the plan's credit was granted once (the plan read from the subscription at
    # Stripe), and the account is on the plan
    assert paid.json()["outcome"].startswith("plan credit granted")
    assert Purchase.objects.filter(account_id=customer.id, kind="subscription").count() == 1
    assert _account(customer).plan_id == "payg"
    wait_until(lambda: StripeEvent.objects.filter(stripe_id=created_delivery["event"]["id"],
                                                  processed_at__isnull=False).exists())


@pytest.mark.usefixtures("payg_price")
def test_subscribing_is_refused_without_a_card_twice_or_for_a_plan_not_sold(
        make_customer, save_card):
    customer = make_customer()

    no_card = customer.api.post("/api/v1/subscription", {"plan": "payg"}, format="json")
    free = customer.api.post("/api/v1/subscription", {"plan": "free"}, format="json")
    _subscribed(customer, save_card)
    twice = customer.api.post("/api/v1/subscription", {"plan": "payg"}, format="json")

    assert (no_card.status_code, no_card.json()["code"]) == (400, "no_card")
    assert (free.status_code, free.json()["code"]) == (400, "plan_not_available")
    assert (twice.status_code, twice.json()["code"]) == (409, "already_subscribed")
    assert Subscription.objects.filter(account_id=customer.id).count() == 1


@pytest.mark.usefixtures("payg_price")
def test_a_failed_invoice_grants_nothing_and_is_recorded(make_customer, save_card,
                                                         stripe_client, service_webhook_url):
    customer = make_customer()
    subscription = _subscribed(customer, save_card)
    invoice = stripe_client.v1.invoices.retrieve(
        Purchase.objects.get(account_id=customer.id).reference).to_dict()
    failed = {**invoice, "id": f"in_failed_{uuid.uuid4().hex}", "status": "open",
              "amount_paid": 0}

    response = deliver(service_webhook_url, event_payload("invoice.payment_failed", failed))

    assert response.json()["outcome"] == "recorded"
    assert Purchase.objects.filter(account_id=customer.id).count() == 1
    sub = Subscription.objects.get(stripe_subscription_id=subscription["subscription_id"])
    assert sub.last_invoice_failure == f"invoice {failed['id']} payment failed"
    assert _account(customer).plan_id == "payg"  # Stripe retries; its news decides the plan


# --- News out of order ------------------------------------------------------------------------


def _news(event_type: str, state: dict, status: str, created: int) -> bytes:
    return event_payload(event_type, {**state, "status": status}, created=created)


@pytest.mark.usefixtures("service_webhook_paused")
def test_within_one_second_a_subscription_only_moves_forward(
        make_customer, save_card, stripe_client, service_webhook_url, payg_price):
    # Given a subscription whose "active" update was applied
    customer = make_customer()
    created = subscription_made_at_stripe(customer, save_card, stripe_client, payg_price)
    state = stripe_client.v1.subscriptions.retrieve(created.id).to_dict()
    second = int(time.time())
    active = deliver(service_webhook_url, _news("customer.subscription.updated", state,
                                                "active", second))
    assert active.json()["outcome"] == "subscription active; plan payg"
    recorded = Subscription.objects.filter(stripe_subscription_id=created.id).values().get()
    lots = CreditLot.objects.filter(account_id=customer.id).count()

    # When its creation ("incomplete") arrives later, stamped with the same second, and
    # then again stamped a second earlier
    same = deliver(service_webhook_url, _news("customer.subscription.created", state,
                                              "incomplete", second))
    earlier = deliver(service_webhook_url, _news("customer.subscription.created", state,
                                                 "incomplete", second - 1))

    # Then both are ignored: the subscription stays active and the account on the plan
    for response in (same, earlier):
        assert response.status_code == 200, response.content
        assert response.json()["outcome"] == "ignored: older than the state recorded (active)"
    assert Subscription.objects.filter(
        stripe_subscription_id=created.id).values().get() == recorded
    assert _account(customer).plan_id == "payg"
    assert CreditLot.objects.filter(account_id=customer.id).count() == lots

    # And the other way round, for another customer: "incomplete", then "active" in the
    # same second, moves the subscription forward
    other = make_customer()
    made = subscription_made_at_stripe(other, save_card, stripe_client, payg_price)
    other_state = stripe_client.v1.subscriptions.retrieve(made.id).to_dict()
    second = int(time.time())
    first = deliver(service_webhook_url, _news("customer.subscription.created", other_state,
                                               "incomplete", second))
    assert first.json()["outcome"] == "subscription incomplete; plan free"
    then = deliver(service_webhook_url, _news("customer.subscription.updated", other_state,
                                              "active", second))
    assert then.json()["outcome"] == "subscription active; plan payg"
    assert Subscription.objects.get(stripe_subscription_id=made.id).status == "active"
    assert _account(other).plan_id == "payg"


@pytest.mark.usefixtures("service_webhook_paused")
def test_a_refund_of_a_plan_invoice_not_recorded_yet_waits_for_the_invoice(
        make_customer, save_card, stripe_client, service_webhook_url, payg_price):
    # Given a plan invoice paid at Stripe whose invoice.paid has not arrived, and refunded
    customer = make_customer()
    created = subscription_made_at_stripe(customer, save_card, stripe_client, payg_price)
    invoice = stripe_client.v1.invoices.retrieve(created.latest_invoice).to_dict()
    intent_id = invoice["payment_intent"]
    assert intent_id and invoice["status"] == "paid"
    stripe_client.v1.refunds.create(params={"payment_intent": intent_id, "amount": 100})
    intent = stripe_client.v1.payment_intents.retrieve(intent_id)
    charge_id = intent.latest_charge if isinstance(intent.latest_charge, str) \
        else intent.latest_charge.id
    refunded = event_payload("charge.refunded",
                             stripe_client.v1.charges.retrieve(charge_id).to_dict())
    event_id = json.loads(refunded)["id"]
    counts, before = db_counts(), account_state(customer.id)

    # When Stripe reports the refund first
    response = deliver(service_webhook_url, refunded)

    # Then it is refused for now, so that Stripe delivers it again; nothing is written
    assert response.status_code == 500, response.content
    assert response.json()["code"] == "processing_failed"
    event = StripeEvent.objects.get(stripe_id=event_id)
    assert event.processed_at is None and "no purchase recorded yet" in event.last_error
    assert (db_counts(), account_state(customer.id)) == (counts, before)
    assert not Reversal.objects.exists()

    # When invoice.paid arrives, and then Stripe delivers the refund again
    paid = deliver(service_webhook_url, event_payload("invoice.paid", invoice))
    assert paid.json()["outcome"].startswith("plan credit granted"), paid.content
    again = deliver(service_webhook_url, refunded)

    # Then the plan's credit was granted and the $1 refund taken back from it
    assert again.status_code == 200, again.content
    assert again.json()["outcome"] == "1 refund(s) applied"
    purchase = Purchase.objects.get(account_id=customer.id, kind="subscription")
    assert (purchase.amount_nanos, purchase.refunded_nanos) == (3 * USD, 1 * USD)
    reversal = Reversal.objects.get(purchase=purchase)
    assert (reversal.amount_nanos, reversal.clawed_nanos) == (1 * USD, 1 * USD)
    assert CreditLot.objects.get(id=purchase.lot_id).remaining_nanos == 4 * USD
    event.refresh_from_db()
    assert event.processed_at is not None and event.last_error == ""
    assert_books_agree(customer.id, 5 * USD)  # $1 free + $5 plan credit - $1 refunded
