"""Figure 6: Stripe webhooks. Forged, tampered and stale deliveries are shown by
tests/billing/test_webhooks.py (marked for the figure); here, replays of a genuine
delivery, and one customer's event stream delivered in shuffled orders."""

import itertools
import random
import time
import uuid
from collections import defaultdict

import pytest

from accounts.models import Account
from billing.models import CreditLot, Dispute, LedgerEntry, Purchase, Reversal, StripeEvent
from tests.billing.conftest import deliver, event_payload
from tests.billing.test_refunds import _charge_id, _charge_refunded, _paid_on_stripe_not_recorded
from tests.billing.test_webhooks import _paid_in_the_browser, _unconfirmed_purchase
from tests.prove.figures import scaled
from tests.support import assert_books_agree

pytestmark = pytest.mark.usefixtures("stripe_live")

USD = 10**9
REPLAYS = scaled(ci=100, full=1_000)
ORDERS = scaled(ci=3, full=12)


@pytest.mark.figure(6, tried="a genuine payment_intent.succeeded delivery (localstripe's "
                    "own bytes and signature) replayed one after another")
def test_replays_of_a_delivery_add_nothing(make_customer, save_card, stripe_client,
                                           stripe_live, service_webhook_url, figure):
    customer = make_customer()
    purchase = _unconfirmed_purchase(customer, save_card)
    delivery = _paid_in_the_browser(stripe_client, stripe_live, purchase)
    assert Purchase.objects.filter(account=customer.account).count() == 1
    before = (Account.objects.values("balance_nanos", "tier_id").get(id=customer.id),
              LedgerEntry.objects.count(), CreditLot.objects.count(),
              StripeEvent.objects.count())

    statuses = defaultdict(int)
    for _ in range(REPLAYS):
        statuses[deliver(service_webhook_url, delivery["body"],
                         delivery["signature"]).status_code] += 1

    figure.add(counts=f"{REPLAYS} replays: answers {dict(statuses)}; 1 purchase, ledger, "
                      "lots, events and balance unchanged")
    assert statuses == {200: REPLAYS}
    after = (Account.objects.values("balance_nanos", "tier_id").get(id=customer.id),
             LedgerEntry.objects.count(), CreditLot.objects.count(),
             StripeEvent.objects.count())
    assert after == before
    assert Purchase.objects.filter(account=customer.account).count() == 1
    assert_books_agree(customer.id, 21 * USD)


def customer_stream(make_customer, save_card, stripe_client, stripe_live):
    """One customer's news from Stripe, none delivered yet: $25 and $10 paid, $10 of the
    first refunded, the second disputed (opened, then won)."""
    customer = make_customer()
    first = _paid_on_stripe_not_recorded(customer, save_card, stripe_client, "25.00")
    second = _paid_on_stripe_not_recorded(customer, save_card, stripe_client, "10.00")
    stripe_client.v1.refunds.create(params={"payment_intent": first, "amount": 1000})
    now = int(time.time())
    dispute = {"id": f"du_{uuid.uuid4().hex[:12]}", "object": "dispute", "amount": 1000,
               "currency": "usd", "charge": _charge_id(stripe_client, second),
               "payment_intent": second, "reason": "fraudulent"}
    events = {
        "paid $25": stripe_live.wait_for("payment_intent.succeeded", first),
        "paid $10": stripe_live.wait_for("payment_intent.succeeded", second),
        "refund $10 of $25": {"body": _charge_refunded(stripe_client, intent_id=first)},
        "dispute opened": {"body": event_payload("charge.dispute.created",
                                                 {**dispute, "status": "needs_response"},
                                                 created=now - 60)},
        "dispute won": {"body": event_payload("charge.dispute.closed",
                                              {**dispute, "status": "won"}, created=now)},
    }
    return customer, events


def end_state(customer) -> dict:
    """What the customer and staff would see, without ids."""
    account = Account.objects.get(id=customer.id)
    books = defaultdict(int)
    for book, amount in LedgerEntry.objects.filter(account_id=customer.id).values_list(
            "book", "amount_nanos"):
        books[book] += amount
    return {
        "account": (account.balance_nanos, account.receivable_nanos, account.status,
                    account.tier_id),
        "purchases": sorted(Purchase.objects.filter(account_id=customer.id).values_list(
            "amount_nanos", "refunded_nanos")),
        "lots": sorted(CreditLot.objects.filter(account_id=customer.id).values_list(
            "source", "amount_nanos", "remaining_nanos")),
        "reversals": sorted(Reversal.objects.filter(account_id=customer.id).values_list(
            "kind", "amount_nanos", "clawed_nanos")),
        "disputes": sorted(Dispute.objects.filter(account_id=customer.id).values_list(
            "status", flat=True)),
        "books": dict(books),
    }


@pytest.mark.usefixtures("service_webhook_paused")
@pytest.mark.figure(6, tried="one customer's event stream (2 payments, a refund, a dispute "
                    "opened and won) delivered in shuffled orders, each on a fresh customer")
def test_shuffled_delivery_orders_end_in_the_same_state(make_customer, save_card,
                                                        stripe_client, stripe_live,
                                                        service_webhook_url, figure):
    names = [
        "paid $25", "paid $10", "refund $10 of $25", "dispute opened", "dispute won"]
    shuffled = random.Random(6).sample(list(itertools.permutations(names))[1:], ORDERS)
    orders = [tuple(names), *shuffled]
    states = []
    for order in orders:
        customer, events = customer_stream(make_customer, save_card, stripe_client,
                                           stripe_live)
        for name in order:
            event = events[name]
            response = deliver(service_webhook_url, event["body"], event.get("signature"))
            assert response.status_code == 200, (order, name, response.content)
        states.append(end_state(customer))
        assert_books_agree(customer.id)
    figure.add(counts=f"{len(orders)} orders of 5 events (the natural one + {ORDERS} "
                      "shuffled): every end state equal (balance, status, purchases, lots, "
                      "reversals, disputes, ledger books)")
    first = states[0]
    assert first["purchases"] == [(10 * USD, 0), (25 * USD, 10 * USD)]
    assert first["account"][2] == "suspended"
    for order, state in zip(orders, states, strict=True):
        assert state == first, order
