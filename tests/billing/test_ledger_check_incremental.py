"""`ledger_check` from its checkpoint: it reads only what was posted since the last check
that passed, and finds what the full check finds in it; a rewrite of old ledger rows
sends it back to the whole ledger; a posting still in flight is never passed over."""

import threading
from collections import defaultdict

import pytest
from django.core.management import call_command
from django.db import connection, transaction
from django.db.models import F, Sum
from django.utils import timezone

from billing.credit import credit_grant
from billing.ledger import Book
from billing.ledger_check import ledger_check_run
from billing.models import LedgerCheckpoint, LedgerCheckpointSum, LedgerEntry
from tests.billing.test_ledger_check import entry_amount_set
from tests.factories import AccountFactory

USD = 10**9


def check(**kwargs):
    return ledger_check_run(now=timezone.now(), **kwargs)


def checkpoint_sums() -> dict:
    return {(s.account_id, s.book, s.lot_id): s.total_nanos
            for s in LedgerCheckpointSum.objects.exclude(total_nanos=0)}


def ledger_sums() -> dict:
    sums = defaultdict(int)
    for row in (LedgerEntry.objects.filter(book__in=[Book.CUSTOMER_CREDIT,
                                                     Book.CUSTOMER_RECEIVABLE])
                .values("account_id", "book", "lot_id").annotate(total=Sum("amount_nanos"))):
        if row["total"]:
            sums[(row["account_id"], row["book"], row["lot_id"])] = row["total"]
    return dict(sums)


def unbalanced_posting(*, account, amount_nanos: int) -> int:
    """A transaction with one platform-fee leg, written with the triggers off for this
    session only (the deferred balance check never sees it)."""
    with connection.cursor() as cursor:
        cursor.execute("SET session_replication_role = replica")
        try:
            cursor.execute("INSERT INTO billing_ledgertransaction (account_id, kind, memo,"
                           " created_at) VALUES (%s, 'adjustment', 'tampered', now())"
                           " RETURNING id", [account.id])
            (txn_id,) = cursor.fetchone()
            cursor.execute("INSERT INTO billing_ledgerentry (transaction_id, book, account_id,"
                           " amount_nanos) VALUES (%s, 'platform_fee', %s, %s)",
                           [txn_id, account.id, amount_nanos])
        finally:
            cursor.execute("SET session_replication_role = DEFAULT")
    return txn_id


@pytest.fixture
def checked():
    """Given two accounts with their opening postings, and a full check that passed."""
    accounts = [AccountFactory(), AccountFactory()]
    result = check()
    assert result.mode == "full" and result.problems == []
    return accounts


@pytest.mark.django_db
def test_an_incremental_check_reads_only_what_was_posted_since(checked):
    before = LedgerCheckpoint.objects.get()
    # When one grant is posted after the checkpoint
    lot, _ = credit_grant(account_id=checked[0].id, amount_nanos=5 * USD, reason="goodwill")

    result = check()

    # Then the check reads that one transaction and its one customer-book entry, agrees,
    # and moves the checkpoint past it, with the same sums as the whole ledger's
    assert (result.mode, result.problems) == ("incremental", [])
    assert (result.transactions_checked, result.entries_read) == (1, 1)
    after = LedgerCheckpoint.objects.get()
    assert after.through_transaction_id > before.through_transaction_id
    assert after.through_entry_id > before.through_entry_id
    assert after.full_checked_at == before.full_checked_at
    assert checkpoint_sums() == ledger_sums()
    assert checkpoint_sums()[(checked[0].id, Book.CUSTOMER_CREDIT, lot.id)] == 5 * USD


@pytest.mark.django_db
@pytest.mark.ledger_tampered
def test_an_incremental_check_finds_an_unbalanced_posting_as_the_full_one_does(checked):
    before = LedgerCheckpoint.objects.get()
    # When new postings include one that does not balance
    credit_grant(account_id=checked[0].id, amount_nanos=5 * USD, reason="goodwill")
    txn_id = unbalanced_posting(account=checked[1], amount_nanos=5)
    credit_grant(account_id=checked[1].id, amount_nanos=7 * USD, reason="goodwill")

    incremental = check()
    full = check(full=True)

    # Then the incremental check names it, exactly as the full check does
    assert incremental.mode == "incremental"
    assert incremental.problems == full.problems == [
        f"ledger transaction {txn_id} sums to 5, not zero"]
    # and the checkpoint stays where it was, so the next check reports it again
    assert incremental.checkpoint_after is None and full.checkpoint_after is None
    assert LedgerCheckpoint.objects.get().through_transaction_id == \
        before.through_transaction_id
    assert check().problems == full.problems


@pytest.mark.django_db
@pytest.mark.ledger_tampered
def test_an_incremental_check_finds_a_balance_changed_behind_the_ledger(checked):
    # Given new postings since the checkpoint, on another account
    credit_grant(account_id=checked[1].id, amount_nanos=5 * USD, reason="goodwill")
    # When an account's working balance is raised with no ledger posting
    type(checked[0]).objects.filter(id=checked[0].id).update(
        balance_nanos=F("balance_nanos") + 3)

    incremental = check()
    full = check(full=True)

    # Then both checks name the account, and only it
    assert incremental.mode == "incremental"
    assert incremental.problems == full.problems
    assert len(full.problems) == 1
    assert full.problems[0].startswith(f"account {checked[0].id}: ledger credit ")
    assert full.problems[0].endswith(f"working balance {checked[0].balance_nanos + 3}")


@pytest.mark.django_db
@pytest.mark.ledger_tampered
def test_a_rewritten_old_entry_sends_the_check_back_to_the_whole_ledger(checked):
    # Given an entry older than the checkpoint
    entry = LedgerEntry.objects.filter(account=checked[0], book=Book.CUSTOMER_CREDIT).first()
    assert entry.id <= LedgerCheckpoint.objects.get().through_entry_id
    # When its amount is changed with the append-only triggers off
    entry_amount_set(entry.id, entry.amount_nanos + 1)

    tampered = check()

    # Then the check reads the whole ledger, says why, and finds it
    assert tampered.mode == "full"
    assert "updated or deleted" in tampered.reason
    assert f"ledger transaction {entry.transaction_id} sums to 1, not zero" in tampered.problems

    # And once it is put right, a full check passes and the next one is incremental again
    entry_amount_set(entry.id, entry.amount_nanos)
    repaired = check()
    assert (repaired.mode, repaired.problems) == ("full", [])
    assert check().mode == "incremental"


@pytest.mark.django_db
def test_the_command_says_which_check_it_ran(checked, capsys):
    credit_grant(account_id=checked[0].id, amount_nanos=5 * USD, reason="goodwill")

    call_command("ledger_check")
    call_command("ledger_check", "--full")

    out = capsys.readouterr().out
    assert "ledger_check: incremental (from the checkpoint" in out
    assert "ledger_check: full (asked for a full check)" in out
    assert out.count("the books agree") == 2


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_a_posting_still_in_flight_is_never_passed_by_the_checkpoint():
    # Given two accounts and a full check that passed
    account, other = AccountFactory(), AccountFactory()
    assert check().problems == []
    # and a grant posted in a transaction that stays open
    posted, release = threading.Event(), threading.Event()

    def slow_grant():
        try:
            with transaction.atomic():
                credit_grant(account_id=account.id, amount_nanos=5 * USD, reason="slow")
                posted.set()
                release.wait(30)
        finally:
            connection.close()

    thread = threading.Thread(target=slow_grant)
    thread.start()
    try:
        assert posted.wait(30)
        # When a later grant commits first, and a check runs while the slow one is open
        credit_grant(account_id=other.id, amount_nanos=7 * USD, reason="fast")
        meanwhile = check(in_flight_wait_s=0.2)
    finally:
        release.set()
        thread.join(30)

    # Then that check agrees with what it sees but does not move the checkpoint past the
    # open transaction's ids
    assert meanwhile.problems == []
    assert meanwhile.checkpoint_after is None
    assert "still open" in meanwhile.notes[0]
    # and once the slow grant commits, the next check counts both grants
    after = check()
    assert (after.mode, after.problems) == ("incremental", [])
    assert after.entries_read == 2
    assert checkpoint_sums() == ledger_sums()
