"""Refunds and disputes claw back exactly the unspent credit of the purchase's lot.

Refunds are made on localstripe; localstripe sends no charge.refunded and has no disputes,
so those events are built from localstripe's own charge (or, for disputes, by hand with
its charge and payment ids), signed with the signing secret and posted to the service."""

import time

import pytest

from accounts.models import Account
from accounts.services import account_status_set
from billing.credit import credit_debit
from billing.models import CreditLot, Dispute, LedgerEntry, Purchase, Reversal
from billing.refunds import purchase_refund
from console.models import StaffAction
from metering.auto_scale import auto_scale_purchase
from tests.billing.conftest import deliver, event_payload
from tests.support import assert_books_agree

USD = 10**9

pytestmark = pytest.mark.usefixtures("stripe_live")


def _bought(customer, save_card, amount="25.00") -> Purchase:
    save_card(customer)
    response = customer.api.post("/api/v1/purchases", {"amount_usd": amount}, format="json")
    assert response.status_code == 201, response.content
    return Purchase.objects.select_related("lot").get(id=response.data["purchase"]["purchase_id"])


def _legs(reversal):
    return sorted(LedgerEntry.objects.filter(transaction=reversal.ledger_transaction)
                  .values_list("book", "amount_nanos", "lot_id"))


def _charge_id(stripe_client, intent_id: str) -> str:
    intent = stripe_client.v1.payment_intents.retrieve(intent_id)
    return intent.latest_charge if isinstance(intent.latest_charge, str) \
        else intent.latest_charge.id


def _charge_refunded(stripe_client, purchase=None, *, intent_id: str | None = None) -> bytes:
    charge_id = _charge_id(stripe_client, intent_id or purchase.reference)
    charge = stripe_client.v1.charges.retrieve(charge_id).to_dict()
    return event_payload("charge.refunded", charge)


def _account(customer) -> Account:
    return Account.objects.select_related("tier").get(id=customer.id)


def test_a_partial_refund_claws_back_the_unspent_credit_once_and_lowers_the_tier(
        make_customer, save_card, stripe_client, service_webhook_url):
    # Given $25 bought (tier 3) and $10 spent: the $1 free lot first, then $9 of the purchase
    customer = make_customer()
    purchase = _bought(customer, save_card)
    credit_debit(account_id=customer.id, amount_nanos=10 * USD, reason="usage")
    assert CreditLot.objects.get(id=purchase.lot_id).remaining_nanos == 16 * USD
    assert _account(customer).tier.name == "Tier 3"

    # When staff refund $20 of it
    reversal = purchase_refund(purchase_id=purchase.id, amount_nanos=20 * USD,
                               reason="customer asked")

    # Then the $16 left of the lot is clawed back; the other $4 is the platform's loss
    assert (reversal.amount_nanos, reversal.clawed_nanos) == (20 * USD, 16 * USD)
    assert _legs(reversal) == [("customer_credit", -16 * USD, purchase.lot_id),
                               ("refund_shortfall", -4 * USD, None),
                               ("stripe_cash", 20 * USD, None)]
    assert CreditLot.objects.get(id=purchase.lot_id).remaining_nanos == 0
    account = _account(customer)
    assert account.balance_nanos == 0
    purchase.refresh_from_db()
    assert purchase.refunded_nanos == 20 * USD
    assert (account.purchased_window_nanos, account.tier.name) == (5 * USD, "Tier 1")
    [stripe_refund] = stripe_client.v1.refunds.list(
        params={"payment_intent": purchase.reference}).data
    assert (stripe_refund.id, stripe_refund.amount) == (reversal.stripe_id, 2000)

    # When Stripe then reports the refund (twice), nothing more is clawed back
    body = _charge_refunded(stripe_client, purchase)
    assert deliver(service_webhook_url, body).json()["outcome"] == "0 refund(s) applied"
    assert deliver(service_webhook_url, body).status_code == 200
    assert Reversal.objects.filter(purchase=purchase).count() == 1
    assert _account(customer).balance_nanos == 0

    # When the rest is refunded from the Stripe dashboard and Stripe reports it
    stripe_client.v1.refunds.create(params={"payment_intent": purchase.reference,
                                            "amount": 500})
    response = deliver(service_webhook_url, _charge_refunded(stripe_client, purchase))

    # Then that refund alone is applied: nothing left to claw back, all of it shortfall
    assert response.json()["outcome"] == "1 refund(s) applied"
    latest = Reversal.objects.filter(purchase=purchase).latest("created_at")
    assert (latest.amount_nanos, latest.clawed_nanos) == (5 * USD, 0)
    purchase.refresh_from_db()
    assert purchase.refunded_nanos == 25 * USD
    assert _account(customer).tier.name == "Tier 0"


def test_staff_refund_in_full_from_the_admin(make_customer, save_card, admin_client,
                                             stripe_client):
    # Given $10 bought and nothing spent of it
    customer = make_customer()
    purchase = _bought(customer, save_card, "10.00")

    # When staff pick "Refund through Stripe…" on it, then confirm with a reason
    changelist = "/admin/billing/purchase/"
    form = admin_client.post(changelist, {"action": "refund_through_stripe",
                                          "_selected_action": [str(purchase.id)]})
    done = admin_client.post(changelist, {"action": "refund_through_stripe",
                                          "_selected_action": [str(purchase.id)], "apply": "1",
                                          "amount_usd": "", "reason": "duplicate purchase"})

    # Then all of it is refunded and clawed back, and the action is in the admin's log
    assert form.status_code == 200 and b"Refund through Stripe" in form.content
    assert done.status_code == 302
    reversal = Reversal.objects.get(purchase=purchase)
    assert (reversal.amount_nanos, reversal.clawed_nanos) == (10 * USD, 10 * USD)
    assert _account(customer).balance_nanos == 1 * USD  # the free credit is untouched
    audit = StaffAction.objects.get(kind="purchase_refund")
    assert (audit.reason, audit.summary.startswith("Refunded $10.00")) == (
        "duplicate purchase", True)
    assert [r.amount for r in stripe_client.v1.refunds.list(
        params={"payment_intent": purchase.reference}).data] == [1000]

    # And refunding it again is refused with the reason, and changes nothing
    again = admin_client.post(changelist, {"action": "refund_through_stripe",
                                           "_selected_action": [str(purchase.id)],
                                           "apply": "1", "amount_usd": "", "reason": "again"},
                              follow=True)
    assert b"at most 0.000000000 USD" in again.content
    assert Reversal.objects.filter(purchase=purchase).count() == 1


def _dispute(purchase, stripe_client, *, status, dispute_id="du_test_1") -> dict:
    return {"id": dispute_id, "object": "dispute", "amount": purchase.amount_nanos // 10**7,
            "currency": "usd", "charge": _charge_id(stripe_client, purchase.reference),
            "payment_intent": purchase.reference, "reason": "fraudulent", "status": status}


def test_a_dispute_suspends_the_account_and_a_lost_dispute_claws_back_the_unspent_credit(
        make_customer, save_card, stripe_client, service_webhook_url, api):
    # Given $25 bought, $5 spent ($1 free, then $4 of the purchase)
    customer = make_customer()
    purchase = _bought(customer, save_card)
    credit_debit(account_id=customer.id, amount_nanos=5 * USD, reason="usage")

    # When the cardholder disputes the charge (Stripe tells us three times)
    opened = event_payload("charge.dispute.created",
                           _dispute(purchase, stripe_client, status="needs_response"))
    for _ in range(3):
        assert deliver(service_webhook_url, opened).status_code == 200

    # Then the account is suspended, once, and no credit is taken yet
    account = api.get(f"/internal/v1/accounts/{customer.id}").json()
    assert account["status"] == "suspended"
    assert _account(customer).status_reason.startswith("Payment dispute du_test_1")
    assert account["balance_usd"] == "21.000000000"
    assert not Reversal.objects.exists()

    # When the dispute is lost
    lost = event_payload("charge.dispute.closed",
                         _dispute(purchase, stripe_client, status="lost"))
    assert deliver(service_webhook_url, lost).status_code == 200
    assert deliver(service_webhook_url, lost).status_code == 200

    # Then the unspent $21 is clawed back once, the tier falls, the account stays suspended
    reversal = Reversal.objects.get(purchase=purchase)
    assert (reversal.kind, reversal.amount_nanos, reversal.clawed_nanos) == (
        "dispute", 25 * USD, 21 * USD)
    assert _legs(reversal) == [("customer_credit", -21 * USD, purchase.lot_id),
                               ("refund_shortfall", -4 * USD, None),
                               ("stripe_cash", 25 * USD, None)]
    account = api.get(f"/internal/v1/accounts/{customer.id}").json()
    assert (account["balance_usd"], account["tier"]["name"], account["status"]) == (
        "0.000000000", "Tier 0", "suspended")
    assert Dispute.objects.get().status == "lost"

    # And while suspended, the account takes no new payments
    refused = customer.api.post("/api/v1/purchases", {"amount_usd": "10.00"}, format="json")
    assert (refused.status_code, refused.json()["code"]) == (403, "account_suspended")
    assert auto_scale_purchase(account_id=customer.id) is False
    assert Purchase.objects.filter(account_id=customer.id).count() == 1


def test_dispute_news_in_any_order_suspends_once_and_a_won_dispute_leaves_it_to_staff(
        make_customer, save_card, stripe_client, service_webhook_url):
    # Given $25 bought
    customer = make_customer()
    purchase = _bought(customer, save_card)
    now = int(time.time())

    # When the dispute's closing (won) arrives before its opening
    won = event_payload("charge.dispute.closed", _dispute(purchase, stripe_client,
                                                          status="won"), created=now)
    opened = event_payload("charge.dispute.created", _dispute(
        purchase, stripe_client, status="needs_response"), created=now - 60)
    assert deliver(service_webhook_url, won).status_code == 200
    suspended_at = Dispute.objects.get().suspended_at
    # and staff, having reviewed it, reinstate the account before the late opening arrives
    account_status_set(account_id=customer.id, status="active", reason="dispute won")
    assert deliver(service_webhook_url, opened).status_code == 200

    # Then the dispute stays won, the account was suspended once and stays reinstated,
    # and no credit was taken
    dispute = Dispute.objects.get()
    assert (dispute.status, dispute.suspended_at) == ("won", suspended_at)
    assert _account(customer).status == "active"
    assert not Reversal.objects.exists()
    assert _account(customer).balance_nanos == 26 * USD


# --- News of a reversal before the success it reverses ---------------------------------------


def _paid_on_stripe_not_recorded(customer, save_card, stripe_client, amount="25.00") -> str:
    """A purchase the customer paid on Stripe (the browser confirmed it) while the service
    heard nothing: no confirm call, and payment_intent.succeeded not delivered yet."""
    save_card(customer)
    created = customer.api.post("/api/v1/purchases", {"amount_usd": amount, "confirm": False},
                                format="json")
    assert created.status_code == 201, created.content
    intent_id = created.data["payment_intent_id"]
    assert stripe_client.v1.payment_intents.confirm(intent_id).status == "succeeded"
    assert not Purchase.objects.filter(account_id=customer.id).exists()
    return intent_id


def _purchase_lots(customer) -> list[CreditLot]:
    return list(CreditLot.objects.filter(account_id=customer.id, source="purchase"))


@pytest.mark.usefixtures("service_webhook_paused")
def test_a_refund_reported_before_the_purchase_records_it_first_then_claws_back(
        make_customer, save_card, stripe_client, stripe_live, service_webhook_url):
    # Given $25 paid on Stripe whose success the service has not heard of yet
    customer = make_customer()
    intent_id = _paid_on_stripe_not_recorded(customer, save_card, stripe_client)
    succeeded = stripe_live.wait_for("payment_intent.succeeded", intent_id)
    # and $10 of it refunded from the Stripe dashboard
    stripe_client.v1.refunds.create(params={"payment_intent": intent_id, "amount": 1000})

    # When Stripe's charge.refunded arrives first
    response = deliver(service_webhook_url, _charge_refunded(stripe_client,
                                                             intent_id=intent_id))

    # Then the purchase is recorded (read from Stripe), and the refund clawed back from it
    assert response.status_code == 200, response.content
    assert response.json()["outcome"] == "1 refund(s) applied"
    purchase = Purchase.objects.get(account_id=customer.id)
    assert (purchase.reference, purchase.amount_nanos, purchase.refunded_nanos) == (
        intent_id, 25 * USD, 10 * USD)
    [lot] = _purchase_lots(customer)
    assert (lot.id, lot.amount_nanos, lot.remaining_nanos) == (purchase.lot_id, 25 * USD,
                                                               15 * USD)
    reversal = Reversal.objects.get(purchase=purchase)
    assert (reversal.kind, reversal.amount_nanos, reversal.clawed_nanos) == (
        "refund", 10 * USD, 10 * USD)
    assert_books_agree(customer.id, 16 * USD)  # $1 free + $25 bought - $10 refunded

    # When payment_intent.succeeded arrives after all
    late = deliver(service_webhook_url, succeeded["body"], succeeded["signature"])

    # Then nothing more is credited: one purchase, one lot, the refund still taken back
    assert late.status_code == 200, late.content
    assert Purchase.objects.filter(account_id=customer.id).count() == 1
    assert [lot.remaining_nanos for lot in _purchase_lots(customer)] == [15 * USD]
    purchase.refresh_from_db()
    assert purchase.refunded_nanos == 10 * USD
    assert Reversal.objects.filter(account_id=customer.id).count() == 1
    assert_books_agree(customer.id, 16 * USD)


@pytest.mark.parametrize("names_the_payment_intent", [True, False],
                         ids=["dispute-with-payment-intent", "dispute-with-charge-only"])
@pytest.mark.usefixtures("service_webhook_paused")
def test_a_lost_dispute_reported_before_the_purchase_records_it_first_then_claws_back(
        make_customer, save_card, stripe_client, stripe_live, service_webhook_url,
        names_the_payment_intent):
    # Given $25 paid on Stripe whose success the service has not heard of yet
    customer = make_customer()
    intent_id = _paid_on_stripe_not_recorded(customer, save_card, stripe_client)
    succeeded = stripe_live.wait_for("payment_intent.succeeded", intent_id)

    # When the first news is the dispute of that charge, lost
    dispute = {"id": "du_test_early", "object": "dispute", "amount": 2500, "currency": "usd",
               "charge": _charge_id(stripe_client, intent_id), "reason": "fraudulent",
               "status": "lost"}
    if names_the_payment_intent:
        dispute["payment_intent"] = intent_id
    response = deliver(service_webhook_url, event_payload("charge.dispute.closed", dispute))

    # Then the purchase is recorded, and the dispute takes all of it back
    assert response.status_code == 200, response.content
    purchase = Purchase.objects.get(account_id=customer.id)
    assert (purchase.reference, purchase.amount_nanos, purchase.refunded_nanos) == (
        intent_id, 25 * USD, 25 * USD)
    [lot] = _purchase_lots(customer)
    assert (lot.id, lot.remaining_nanos) == (purchase.lot_id, 0)
    reversal = Reversal.objects.get(purchase=purchase)
    assert (reversal.kind, reversal.amount_nanos, reversal.clawed_nanos) == (
        "dispute", 25 * USD, 25 * USD)
    assert Dispute.objects.get().purchase_id == purchase.id
    assert _account(customer).status == "suspended"
    assert_books_agree(customer.id, 1 * USD)  # the free credit only

    # When payment_intent.succeeded arrives after all
    late = deliver(service_webhook_url, succeeded["body"], succeeded["signature"])

    # Then nothing more is credited
    assert late.status_code == 200, late.content
    assert Purchase.objects.filter(account_id=customer.id).count() == 1
    assert [lot.remaining_nanos for lot in _purchase_lots(customer)] == [0]
    assert Reversal.objects.filter(account_id=customer.id).count() == 1
    assert_books_agree(customer.id, 1 * USD)
