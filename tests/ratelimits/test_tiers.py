"""Unlock tiers follow the credits *purchased* in the rolling 28 days: a purchase raises
the tier at once, its ageing out lowers it, and grants never count."""

from datetime import timedelta

import pytest

from billing.credit import credit_grant, free_grant_ensure, purchase_record
from billing.models import Purchase
from ratelimits.tiers import tier_for_purchased, tiers_changed
from tests.factories import AccountFactory
from tests.support import BASE, T0, USD, assert_books_agree

pytestmark = pytest.mark.django_db

US = timedelta(microseconds=1)
TIER_0 = {"name": "Tier 0", "max_params_b": 7, "concurrency": 1}
TIER_2 = {"name": "Tier 2", "max_params_b": 35, "concurrency": 4}
TIER_3 = {"name": "Tier 3", "max_params_b": 70, "concurrency": 10}


@pytest.fixture
def account(time_machine):
    time_machine.move_to(T0, tick=False)
    return AccountFactory()


def read(api, account) -> dict:
    body = api.get(f"{BASE}/accounts/{account.id}").json()
    return {"purchased": body["purchased_last_4_weeks_usd"], "tier": body["tier"],
            "limit": body["concurrency"]["limit"]}


@pytest.mark.parametrize(("purchased_usd", "tier"), [
    (0, "Tier 0"), (2.99, "Tier 0"), (3, "Tier 1"), (9.99, "Tier 1"), (10, "Tier 2"),
    (25, "Tier 3"), (50, "Tier 4"), (100, "Tier 5"), (499, "Tier 5"), (500, "Tier 6"),
    (1000, "Tier 7"), (10**6, "Tier 7"),
])
def test_tier_thresholds_follow_the_design_table(purchased_usd, tier):
    assert tier_for_purchased(purchased_nanos=round(purchased_usd * USD)).name == tier


def test_the_tier_drops_when_a_purchase_ages_out_of_the_window(api, account, time_machine):
    # Given $10 bought at T0 and $15 bought ten days later: $25, Tier 3.
    purchase_record(account_id=account.id, amount_nanos=10 * USD, reference="A",
                    kind=Purchase.Kind.INVOICE, now=T0)
    purchase_record(account_id=account.id, amount_nanos=15 * USD, reference="B",
                    kind=Purchase.Kind.INVOICE, now=T0 + timedelta(days=10))
    time_machine.move_to(T0 + timedelta(days=10), tick=False)
    assert read(api, account) == {"purchased": "25.000000000", "tier": TIER_3, "limit": 10}

    # One microsecond before the first purchase is 28 days old, it still counts.
    time_machine.move_to(T0 + timedelta(days=28) - US, tick=False)
    assert read(api, account)["tier"] == TIER_3

    # At 28 days it has aged out: $15 remains in the window, Tier 2.
    time_machine.move_to(T0 + timedelta(days=28), tick=False)
    assert read(api, account) == {"purchased": "15.000000000", "tier": TIER_2, "limit": 4}

    # When the second ages out too, back to Tier 0.
    time_machine.move_to(T0 + timedelta(days=38), tick=False)
    assert read(api, account) == {"purchased": "0.000000000", "tier": TIER_0, "limit": 1}
    assert_books_agree(account.id, 0)


def test_grants_do_not_count_toward_the_tier(api, account):
    # Given $100 granted by staff, through the API and the service, and the free grant.
    response = api.post(f"{BASE}/accounts/{account.id}/grants",
                        {"amount_usd": "60.00", "reason": "support credit"}, format="json")
    assert response.status_code == 201
    credit_grant(account_id=account.id, amount_nanos=40 * USD, reason="goodwill")
    free_grant_ensure(account_id=account.id)

    # Then the credit is spendable, but the tier is still the one $0 of purchases gives.
    body = api.get(f"{BASE}/accounts/{account.id}").json()
    assert body["balance_usd"] == "101.000000000"
    assert read(api, account) == {"purchased": "0.000000000", "tier": TIER_0, "limit": 1}


def test_refunded_purchases_do_not_count(api, account):
    purchase, _ = purchase_record(account_id=account.id, amount_nanos=25 * USD,
                                  reference="R", kind=Purchase.Kind.INVOICE, now=T0)
    assert read(api, account)["tier"] == TIER_3
    # A full refund takes it out of the window's sum (staff edits of the tiers make every
    # account recompute, which is how this test asks for it).
    Purchase.objects.filter(id=purchase.id).update(refunded_nanos=25 * USD)
    tiers_changed(now=T0)
    assert read(api, account)["tier"] == TIER_0
