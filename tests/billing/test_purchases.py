"""Purchases paid outside Stripe, through POST /accounts/{id}/purchases: idempotent by
reference, and counted toward the unlock tier at once."""

from datetime import timedelta

import pytest
from django.test import Client
from django.utils.dateparse import parse_datetime

from billing.ledger import Book, Kind
from billing.models import CreditLot, LedgerEntry, Purchase
from tests.conftest import INTERNAL_TOKEN
from tests.factories import AccountFactory
from tests.support import BASE, T0, USD, assert_books_agree, db_counts, run_concurrently


def purchases_url(account) -> str:
    return f"{BASE}/accounts/{account.id}/purchases"


@pytest.mark.django_db
class TestPurchaseApi:
    @pytest.fixture
    def account(self, time_machine):
        time_machine.move_to(T0, tick=False)
        return AccountFactory()

    def test_a_purchase_adds_credit_expiring_four_weeks_later(self, api, account):
        response = api.post(purchases_url(account),
                            {"amount_usd": "25.00", "reference": "INV-2026-0042"}, format="json")

        assert response.status_code == 201, response.json()
        body = response.json()
        purchase = Purchase.objects.get(account=account)
        assert body["purchase_id"] == str(purchase.id)
        assert body["amount_usd"] == "25.000000000"
        assert parse_datetime(body["expires_at"]) == T0 + timedelta(days=28)
        assert (purchase.kind, purchase.amount_nanos, purchase.purchased_at) == (
            Purchase.Kind.INVOICE, 25 * USD, T0)
        assert (purchase.lot.amount_nanos, purchase.lot.remaining_nanos) == (25 * USD, 25 * USD)
        # The cash came in outside Stripe.
        legs = LedgerEntry.objects.filter(transaction__kind=Kind.PURCHASE,
                                          transaction__account=account)
        assert sorted(legs.values_list("book", "amount_nanos")) == [
            (Book.CUSTOMER_CREDIT, 25 * USD), (Book.EXTERNAL_CASH, -25 * USD)]
        assert_books_agree(account.id, 26 * USD)

    def test_the_same_reference_again_returns_the_first_purchase_and_adds_nothing(
            self, api, account, time_machine):
        first = api.post(purchases_url(account), {"amount_usd": "25.00", "reference": "INV-7"},
                         format="json")
        assert first.status_code == 201
        before = db_counts()

        # When the same reference comes again, later and even with another amount.
        time_machine.move_to(T0 + timedelta(hours=3), tick=False)
        for amount in ("25.00", "99.00"):
            again = api.post(purchases_url(account), {"amount_usd": amount, "reference": "INV-7"},
                             format="json")
            # Then it is the first purchase, unchanged, and nothing was added.
            assert again.status_code == 200
            assert again.json() == first.json()
        assert db_counts() == before
        assert_books_agree(account.id, 26 * USD)

    def test_the_same_reference_on_another_account_is_another_purchase(self, api, account):
        other = AccountFactory()
        for target in (account, other):
            response = api.post(purchases_url(target), {"amount_usd": "3", "reference": "R-1"},
                                format="json")
            assert response.status_code == 201
        assert Purchase.objects.filter(reference="R-1").count() == 2

    def test_a_purchase_counts_toward_the_tier_at_once(self, api, account):
        detail = f"{BASE}/accounts/{account.id}"
        assert api.get(detail).json()["tier"] == {"name": "Tier 0", "max_params_b": 7,
                                                  "concurrency": 1}

        api.post(purchases_url(account), {"amount_usd": "25", "reference": "A"}, format="json")

        body = api.get(detail).json()
        assert body["purchased_last_4_weeks_usd"] == "25.000000000"
        assert body["tier"] == {"name": "Tier 3", "max_params_b": 70, "concurrency": 10}
        assert body["concurrency"] == {"in_use": 0, "limit": 10}
        assert body["balance_usd"] == "26.000000000"


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_racing_identical_purchases_grant_once():
    # Given an account (a $1 free grant).
    account = AccountFactory()
    body = '{"amount_usd": "10.00", "reference": "WIRE-2026-001"}'

    def post():
        client = Client(headers={"authorization": f"Bearer {INTERNAL_TOKEN}"})
        response = client.post(purchases_url(account), body, content_type="application/json")
        return response.status_code, response.json()

    # When 6 identical purchase calls race, each on its own connection.
    results = run_concurrently([post] * 6)

    # Then one recorded the purchase, the others got that same purchase back.
    statuses = sorted(status for status, _ in results)
    assert statuses == [200] * 5 + [201], results
    assert len({body["purchase_id"] for _, body in results}) == 1
    assert Purchase.objects.filter(account=account).count() == 1
    assert CreditLot.objects.filter(account=account, source="purchase").count() == 1
    assert_books_agree(account.id, 11 * USD)
