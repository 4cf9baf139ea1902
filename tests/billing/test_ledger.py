"""The ledger is double-entry and append-only, and PostgreSQL itself enforces both: a
transaction whose entries do not sum to zero cannot commit, and ledger rows cannot be
updated or deleted, whatever code path tries."""

import pytest
from django.db import IntegrityError, connection, transaction

from billing.ledger import Book, Kind, Leg, UnbalancedTransaction, ledger_post
from billing.models import LedgerEntry, LedgerTransaction
from tests.factories import AccountFactory
from tests.support import T0, USD, db_counts


def entry_rows(txn: LedgerTransaction, *amounts: int) -> None:
    """Insert entries straight into the table, bypassing ledger_post's check."""
    LedgerEntry.objects.bulk_create(
        LedgerEntry(transaction=txn, book=Book.PLATFORM_FEE, amount_nanos=amount)
        for amount in amounts)


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
class TestBalanceIsEnforcedAtCommit:
    def test_an_unbalanced_transaction_cannot_commit(self):
        before = db_counts()

        # When a transaction with entries summing to +5 is committed, bypassing ledger_post.
        with pytest.raises(IntegrityError, match=r"does not balance: its entries sum to 5"), \
                transaction.atomic():
            txn = LedgerTransaction.objects.create(kind=Kind.ADJUSTMENT, memo="forged")
            entry_rows(txn, 10, -5)

        # Then the commit failed and nothing of it is stored.
        assert db_counts() == before

    def test_a_single_leg_cannot_commit(self):
        before = db_counts()
        with pytest.raises(IntegrityError, match="does not balance"), transaction.atomic():
            txn = LedgerTransaction.objects.create(kind=Kind.ADJUSTMENT, memo="one leg")
            entry_rows(txn, 1)
        assert db_counts() == before

    def test_a_transaction_balanced_by_commit_time_commits(self):
        # Given entries inserted one at a time: the check is deferred to the commit, so
        # an intermediate unbalanced state is fine.
        with transaction.atomic():
            txn = LedgerTransaction.objects.create(kind=Kind.ADJUSTMENT, memo="two steps")
            entry_rows(txn, 7)
            entry_rows(txn, -3, -4)
        assert sorted(txn.entries.values_list("amount_nanos", flat=True)) == [-4, -3, 7]

    def test_adding_a_leg_to_a_committed_transaction_cannot_commit(self):
        with transaction.atomic():
            txn = LedgerTransaction.objects.create(kind=Kind.ADJUSTMENT, memo="closed")
            entry_rows(txn, 2, -2)
        with pytest.raises(IntegrityError, match="does not balance"), transaction.atomic():
            entry_rows(txn, 1)
        assert txn.entries.count() == 2



@pytest.mark.django_db
def test_ledger_post_refuses_unbalanced_legs_before_touching_the_database():
    before = db_counts()
    with pytest.raises(UnbalancedTransaction, match="sum to 1"):
        ledger_post(kind=Kind.ADJUSTMENT, now=T0, legs=[
            Leg(Book.PLATFORM_FEE, 3), Leg(Book.STAFF_ADJUSTMENT, -2)])
    with pytest.raises(UnbalancedTransaction, match="at least one"):
        ledger_post(kind=Kind.ADJUSTMENT, now=T0, legs=[Leg(Book.PLATFORM_FEE, 0)])
    assert db_counts() == before


@pytest.fixture
def posted():
    """Given an account whose free grant is in the ledger."""
    account = AccountFactory(now=T0)
    txn = LedgerTransaction.objects.get(account=account, kind=Kind.GRANT)
    return account, txn, txn.entries.get(book=Book.CUSTOMER_CREDIT)


def refused(sql: str, params: list) -> str:
    with pytest.raises(IntegrityError) as error, transaction.atomic(), \
            connection.cursor() as cursor:
        cursor.execute(sql, params)
    return str(error.value)


@pytest.mark.django_db
def test_ledger_entries_cannot_be_updated(posted):
    _, _, entry = posted
    with pytest.raises(IntegrityError, match="append-only: UPDATE on billing_ledgerentry"), \
            transaction.atomic():
        LedgerEntry.objects.filter(id=entry.id).update(amount_nanos=5 * USD)
    # Raw SQL is refused the same way: the trigger is the guard, not the ORM.
    assert "append-only" in refused(
        "UPDATE billing_ledgerentry SET book = 'platform_fee' WHERE id = %s", [entry.id])
    entry.refresh_from_db()
    assert (entry.book, entry.amount_nanos) == (Book.CUSTOMER_CREDIT, USD)


@pytest.mark.django_db
def test_ledger_entries_cannot_be_deleted(posted):
    _, txn, entry = posted
    with pytest.raises(IntegrityError, match="append-only: DELETE on billing_ledgerentry"), \
            transaction.atomic():
        LedgerEntry.objects.filter(id=entry.id).delete()
    assert "append-only" in refused("DELETE FROM billing_ledgerentry WHERE transaction_id = %s",
                                    [txn.id])
    assert txn.entries.count() == 2


@pytest.mark.django_db
def test_ledger_transactions_cannot_be_updated_or_deleted(posted):
    _, txn, _ = posted
    with pytest.raises(IntegrityError, match="append-only: UPDATE on billing_ledgertransaction"), \
            transaction.atomic():
        LedgerTransaction.objects.filter(id=txn.id).update(memo="rewritten")
    assert "append-only: DELETE on billing_ledgertransaction" in refused(
        "DELETE FROM billing_ledgertransaction WHERE id = %s", [txn.id])
    txn.refresh_from_db()
    assert txn.memo != "rewritten"
    assert LedgerTransaction.objects.filter(id=txn.id).exists()
