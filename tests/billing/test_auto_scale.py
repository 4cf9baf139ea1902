"""Auto-scale: buy the credit that unlocks more concurrency, once per burst, within the
customer's max monthly spend, on the saved card (off-session, on localstripe)."""

import threading
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from accounts.models import Account
from billing.models import BillingProfile, Payment, Purchase
from metering.auto_scale import auto_scale_purchase
from tests.billing.conftest import DECLINED_ON_CHARGE, GOOD_CARD

USD = 10**9

pytestmark = pytest.mark.usefixtures("stripe_live")


def _customer(make_customer, save_card, api, *, card=GOOD_CARD, purchased="5.00",
              max_spend="100.00"):
    """A customer with a saved card and `purchased` paid by invoice (tier 1 for $5)."""
    customer = make_customer()
    if card:
        assert save_card(customer, card).status_code == 201
    if purchased:
        response = api.post(f"/internal/v1/accounts/{customer.id}/purchases",
                            {"amount_usd": purchased, "reference": "INV-1"}, format="json")
        assert response.status_code == 201, response.content
    assert customer.api.put("/api/v1/auto-scale", {"max_monthly_spend_usd": max_spend},
                            format="json").status_code == 200
    return customer


def _account(customer) -> Account:
    return Account.objects.select_related("tier").get(id=customer.id)


def _charges(stripe_client, customer) -> list[int]:
    profile = BillingProfile.objects.filter(account_id=customer.id).first()
    if profile is None or not profile.stripe_customer_id:
        return []
    return [c.amount for c in stripe_client.v1.charges.list(
        params={"customer": profile.stripe_customer_id}).data]


def test_a_burst_of_callers_makes_one_purchase_and_all_see_the_raised_tier(
        make_customer, save_card, api, stripe_client):
    # Given tier 1 ($5 purchased: 4 slots); the next tier with more slots is $25 (10 slots)
    customer = _customer(make_customer, save_card, api)
    assert (_account(customer).tier.name, _account(customer).tier_concurrency) == ("Tier 1", 4)

    # When 8 runs refused for concurrency ask for auto-scale at the same time
    barrier = threading.Barrier(8)
    results = [None] * 8

    def call(index):
        try:
            barrier.wait()
            results[index] = auto_scale_purchase(account_id=customer.id)
        finally:
            connection.close()

    threads = [threading.Thread(target=call, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    # Then all of them may go ahead, on one purchase of $20 charged once
    assert results == [True] * 8
    [purchase] = Purchase.objects.filter(account_id=customer.id, kind="auto_scale")
    assert (purchase.amount_nanos, purchase.lot.source) == (20 * USD, "auto_scale")
    assert _charges(stripe_client, customer) == [2000]
    account = _account(customer)
    assert (account.tier.name, account.tier_concurrency) == ("Tier 3", 10)

    # And a later caller of the same burst does not buy again
    assert auto_scale_purchase(account_id=customer.id,
                               now=timezone.now() + timedelta(seconds=30)) is True
    assert _charges(stripe_client, customer) == [2000]


def test_the_amount_is_rounded_up_to_whole_cents(make_customer, save_card, api,
                                                 stripe_client):
    customer = _customer(make_customer, save_card, api, purchased="3.333333333")

    assert auto_scale_purchase(account_id=customer.id) is True

    # $25 - $3.333333333 = $21.666666667, charged as $21.67
    assert _charges(stripe_client, customer) == [2167]
    assert _account(customer).purchased_window_nanos == 25_003_333_333


@pytest.mark.parametrize("max_spend, bought", [("20.01", True), ("20.00", True),
                                               ("19.99", False)])
def test_the_max_monthly_spend_holds(make_customer, save_card, api, stripe_client,
                                     max_spend, bought):
    customer = _customer(make_customer, save_card, api, max_spend=max_spend)

    assert auto_scale_purchase(account_id=customer.id) is bought

    assert _charges(stripe_client, customer) == ([2000] if bought else [])
    assert Payment.objects.filter(account_id=customer.id,
                                  purpose="auto_scale").count() == (1 if bought else 0)


def test_it_cannot_buy_without_a_card_with_a_declined_card_or_beyond_the_top_tier(
        make_customer, save_card, api, stripe_client):
    no_card = _customer(make_customer, save_card, api, card=None)
    declined = _customer(make_customer, save_card, api, card=DECLINED_ON_CHARGE)
    top = _customer(make_customer, save_card, api, purchased="1000.00")
    unset = _customer(make_customer, save_card, api, max_spend="0")

    assert auto_scale_purchase(account_id=no_card.id) is False
    assert auto_scale_purchase(account_id=declined.id) is False
    assert auto_scale_purchase(account_id=top.id) is False
    assert auto_scale_purchase(account_id=unset.id) is False

    assert not Purchase.objects.filter(kind="auto_scale").exists()
    [failed] = Payment.objects.filter(purpose="auto_scale")
    assert (failed.account_id, failed.status, failed.failure_code) == (
        declined.id, "failed", "card_declined")
    assert _account(declined).tier.name == "Tier 1"
    assert [_charges(stripe_client, c) for c in (no_card, top, unset)] == [[], [], []]


def test_auto_scale_settings_read_and_write(make_customer, save_card):
    customer = make_customer()

    defaults = customer.api.get("/api/v1/auto-scale")
    changed = customer.api.put("/api/v1/auto-scale", {"max_monthly_spend_usd": "250.00"},
                               format="json")
    invalid = customer.api.put("/api/v1/auto-scale", {"max_monthly_spend_usd": "-1"},
                               format="json")

    assert defaults.data == {"max_monthly_spend_usd": "0.000000000",
                             "charged_this_month_usd": "0.000000000", "card_id": None}
    assert changed.data["max_monthly_spend_usd"] == "250.000000000"
    assert invalid.status_code == 400 and "max_monthly_spend_usd" in invalid.json()["fields"]
    assert customer.api.get("/api/v1/auto-scale").data["max_monthly_spend_usd"] == (
        "250.000000000")


# --- Through the gateway's authorize ---------------------------------------------------------


def _authorize(api, customer, request_id, *, auto_scale=False):
    return api.post("/internal/v1/authorize", {
        "api_key": customer.key, "model": "test/auto-scale-7b", "request_id": request_id,
        "auto_scale": auto_scale, "estimate": {"seconds": 10}}, format="json")


@pytest.fixture
def open_7b_model(api):
    response = api.put("/internal/v1/models/test/auto-scale-7b",
                       {"kind": "open", "params_b": 7}, format="json")
    assert response.status_code == 200, response.content


def test_an_authorize_with_auto_scale_buys_the_next_tier_and_runs(
        make_customer, save_card, api, stripe_client, open_7b_model):
    # Given tier 1 (4 slots) with all of them taken by running 7B runs
    customer = _customer(make_customer, save_card, api)
    for index in range(4):
        assert _authorize(api, customer, f"run-{index}").status_code == 200

    # When one more run is refused without auto-scale, then sent with it
    refused = _authorize(api, customer, "run-4")
    scaled = _authorize(api, customer, "run-5", auto_scale=True)

    # Then the first is refused for concurrency, and the second buys $20 (tier 3, 10 slots)
    # once, and runs
    assert (refused.status_code, refused.json()["code"]) == (429, "concurrency_limit")
    assert scaled.status_code == 200, scaled.content
    assert scaled.json()["concurrency"] == {"in_use": 5, "limit": 10}
    assert scaled.json()["tier"]["name"] == "Tier 3"
    assert _charges(stripe_client, customer) == [2000]
    [purchase] = Purchase.objects.filter(account_id=customer.id, kind="auto_scale")
    assert purchase.amount_nanos == 20 * USD


def test_an_authorize_with_auto_scale_that_cannot_buy_is_refused_as_before(
        make_customer, save_card, api, stripe_client, open_7b_model):
    # Given tier 1 with every slot taken, and no saved card
    customer = _customer(make_customer, save_card, api, card=None)
    for index in range(4):
        assert _authorize(api, customer, f"run-{index}").status_code == 200
    balance_before = _account(customer).balance_nanos

    # When a run asks for auto-scale
    response = _authorize(api, customer, "run-4", auto_scale=True)

    # Then it is refused for concurrency, and nothing was bought or reserved
    assert (response.status_code, response.json()["code"]) == (429, "concurrency_limit")
    assert response.json()["limit"] == 4 and response.json()["in_use"] == 4
    account = _account(customer)
    assert (account.tier.name, account.slots_in_use, account.balance_nanos) == (
        "Tier 1", 4, balance_before)
    assert not Purchase.objects.filter(account_id=customer.id, kind="auto_scale").exists()
    assert _charges(stripe_client, customer) == []
