"""`manage.py ledger_check` passes on the demo data and fails, with a non-zero exit, when
an entry was tampered with behind the append-only trigger's back."""

import os
import subprocess
import sys
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command
from django.db import connection

from accounts.models import Account
from billing.ledger import Book
from billing.models import LedgerEntry
from tests.support import assert_books_agree

ROOT = Path(__file__).resolve().parents[2]


def entry_amount_set(entry_id: int, amount_nanos: int) -> None:
    """Change an entry's amount with the append-only trigger switched off for this
    session only (replica mode skips ordinary triggers), then switched back on."""
    with connection.cursor() as cursor:
        cursor.execute("SET session_replication_role = replica")
        try:
            cursor.execute("UPDATE billing_ledgerentry SET amount_nanos = %s WHERE id = %s",
                           [amount_nanos, entry_id])
        finally:
            cursor.execute("SET session_replication_role = DEFAULT")


@contextmanager
def tampered(entry: LedgerEntry, delta_nanos: int):
    """The entry's amount off by `delta_nanos` for the block, put right afterwards (the
    balance trigger still has the entry's insert to check at the end of the test)."""
    entry_amount_set(entry.id, entry.amount_nanos + delta_nanos)
    try:
        yield
    finally:
        entry_amount_set(entry.id, entry.amount_nanos)


def demo_credit_entry() -> LedgerEntry:
    account = Account.objects.get(user__email="demo@example.com")
    return LedgerEntry.objects.filter(account=account, book=Book.CUSTOMER_CREDIT).latest("id")


@pytest.mark.django_db
def test_ledger_check_passes_on_the_demo_data(capsys):
    call_command("demo_seed")
    call_command("demo_seed")  # loading it twice is fine too
    account = Account.objects.get(user__email="demo@example.com")
    # A month of history: lots of different ages, runs charged against them.
    assert account.credit_lots.count() >= 4
    assert account.holds.exists()
    assert_books_agree(account.id)

    call_command("ledger_check")

    assert "the books agree" in capsys.readouterr().out


@pytest.mark.django_db
@pytest.mark.ledger_tampered
def test_ledger_check_fails_on_a_tampered_entry(capsys):
    call_command("demo_seed")
    entry = demo_credit_entry()

    with tampered(entry, +1), pytest.raises(CommandError, match="discrepancies"):
        call_command("ledger_check")

    problems = capsys.readouterr().err
    assert f"ledger transaction {entry.transaction_id} sums to 1, not zero" in problems
    assert f"lot {entry.lot_id}: remaining" in problems
    # The entry is put right, and the append-only trigger is back on for this session.
    call_command("ledger_check")
    with pytest.raises(Exception, match="append-only"), connection.cursor() as cursor:
        cursor.execute("SAVEPOINT probe")
        try:
            cursor.execute("UPDATE billing_ledgerentry SET amount_nanos = 0 WHERE id = %s",
                           [entry.id])
        finally:
            cursor.execute("ROLLBACK TO SAVEPOINT probe")


def manage(*args: str) -> subprocess.CompletedProcess:
    """Run manage.py in a separate process against the test database."""
    db = connection.settings_dict
    env = {**os.environ,
           "DATABASE_URL": f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}"}
    return subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120, check=False)


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
@pytest.mark.ledger_tampered
def test_ledger_check_command_exit_status():
    # Given the demo data, committed where another process can see it.
    call_command("demo_seed")

    passed = manage("ledger_check")
    assert passed.returncode == 0, passed.stderr
    assert "the books agree" in passed.stdout

    # When an entry is tampered with, the command exits non-zero and says where.
    entry = demo_credit_entry()
    with tampered(entry, -7):
        failed = manage("ledger_check")
    assert failed.returncode != 0
    assert f"ledger transaction {entry.transaction_id} sums to -7, not zero" in failed.stderr


@pytest.mark.django_db
@pytest.mark.ledger_tampered
def test_ledger_check_fails_when_the_run_path_would_spend_expired_credit(capsys):
    # Given the demo account, whose first credit expires at some time T.
    call_command("demo_seed")
    account = Account.objects.get(user__email="demo@example.com")
    first_expiry = account.credit_valid_until

    # When its working expiry (what the fast path trusts) is pushed past T.
    Account.objects.filter(id=account.id).update(
        credit_valid_until=first_expiry + timedelta(days=1))

    # Then ledger_check names the account.
    with pytest.raises(CommandError, match="discrepancies"):
        call_command("ledger_check")
    assert (f"account {account.id}: credit valid until "
            f"{(first_expiry + timedelta(days=1)).isoformat()}") in capsys.readouterr().err

    # And agrees again once it is put right.
    Account.objects.filter(id=account.id).update(credit_valid_until=first_expiry)
    call_command("ledger_check")
