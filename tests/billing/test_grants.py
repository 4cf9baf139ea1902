"""Grants through POST /accounts/{id}/grants: spendable credit that is not a purchase."""

from datetime import UTC, datetime, timedelta

import pytest
from django.utils.dateparse import parse_datetime

from billing.credit import credit_debit
from billing.ledger import Book, Kind
from billing.models import CreditLot, LedgerEntry
from tests.factories import AccountFactory
from tests.support import BASE, T0, USD, assert_books_agree, db_counts, usd

pytestmark = pytest.mark.django_db


@pytest.fixture
def account(time_machine):
    time_machine.move_to(T0, tick=False)
    return AccountFactory()


def grant(api, account, **body):
    return api.post(f"{BASE}/accounts/{account.id}/grants", body, format="json")


def test_a_grant_adds_credit_expiring_after_four_weeks(api, account):
    before = db_counts()

    response = grant(api, account, amount_usd="5.00", reason="support credit")

    assert response.status_code == 201
    body = response.json()
    lot = CreditLot.objects.get(id=body["grant_id"])
    assert body == {"grant_id": str(lot.id), "amount_usd": "5.000000000",
                    "reason": "support credit", "expires_at": body["expires_at"]}
    assert parse_datetime(body["expires_at"]) == T0 + timedelta(days=28)
    assert (lot.source, lot.amount_nanos, lot.remaining_nanos, lot.reason) == (
        "staff_grant", 5 * USD, 5 * USD, "support credit")
    # Funded by the promotional book, not by cash.
    txn = LedgerEntry.objects.get(lot=lot).transaction
    assert txn.kind == Kind.GRANT
    assert sorted(txn.entries.values_list("book", "amount_nanos")) == [
        (Book.CUSTOMER_CREDIT, 5 * USD), (Book.PROMOTIONAL, -5 * USD)]
    after = db_counts()
    assert {k: after[k] - before[k] for k in after if after[k] != before[k]} == {
        "lots": 1, "ledger_transactions": 1, "ledger_entries": 2}
    assert_books_agree(account.id, 6 * USD)


def test_a_grant_may_expire_when_it_says_in_any_timezone(api, account):
    response = grant(api, account, amount_usd="2", reason="trial",
                     expires_at="2026-03-05T12:00:00+02:00")

    assert response.status_code == 201
    assert response.json()["expires_at"] == "2026-03-05T10:00:00Z"
    lot = CreditLot.objects.get(id=response.json()["grant_id"])
    assert lot.expires_at == datetime(2026, 3, 5, 10, tzinfo=UTC)
    account.refresh_from_db()
    assert account.credit_valid_until == lot.expires_at


def test_granted_credit_is_spendable(api, account):
    grant(api, account, amount_usd="2.50", reason="make-good")

    assert credit_debit(account_id=account.id, amount_nanos=usd("3.5"), reason="use") == usd("3.5")

    assert_books_agree(account.id, 0)


def test_each_grant_call_is_a_new_grant(api, account):
    for _ in range(3):
        assert grant(api, account, amount_usd="1", reason="same words").status_code == 201
    assert CreditLot.objects.filter(account=account, source="staff_grant").count() == 3
    assert_books_agree(account.id, 4 * USD)
