"""`manage.py ledger_check`'s ledger part, incremental on PostgreSQL: it reads what was
posted since the last check, not the whole ledger.

The checkpoint (LedgerCheckpoint, one row) says up to which transaction and entry ids the
ledger was verified, and LedgerCheckpointSum holds the customer books' sums up to there
(per account and lot). A check then
- verifies every transaction posted since, and every older one that got a new entry
  since, sums to zero and has entries;
- compares checkpoint + new entries with every lot's remaining credit and every account's
  balance, receivable and credit expiry (the rules and messages of billing/selectors.py's
  full check, in SQL that returns only the differences): a change to the working state
  behind the ledger's back is found whenever it happened;
- when it found nothing, moves the checkpoint up to the new horizon.

Its time grows with the new postings and the number of accounts and lots, not with the
ledger. It verifies everything again (`--full`) when there is no checkpoint yet, when
asked to, and when a ledger row was updated or deleted since the checkpoint: the
append-only triggers refuse that, so it only happens with them switched off, and a
trigger that fires even then records it (LedgerRewrite, billing/0008).

The horizon. Ledger ids come from sequences (one value at a time, no per-session cache),
so an id is taken before any id taken after it; but a transaction can commit after one
that took a later id. So the check reads the sequences first, then waits for every
database transaction already running at that moment to end, and only then takes its
snapshot: every id up to what it read is then final (committed or rolled back for good),
and the checkpoint never moves past an id whose row could still appear. Rows above it
that the snapshot already sees are checked too, and again next time."""

import time
from dataclasses import dataclass, field
from datetime import datetime

from django.db import connection, transaction

from billing.ledger import Book
from billing.models import LedgerCheckpoint, LedgerRewrite
from billing.selectors import account_expiry_mismatches, ledger_discrepancies

CUSTOMER_BOOKS = (Book.CUSTOMER_CREDIT, Book.CUSTOMER_RECEIVABLE)
LOCK_KEY = 0x1ED6E5C4  # pg_advisory_lock key: one check at a time moves the checkpoint


class LedgerCheckBusy(RuntimeError):
    pass


@dataclass
class LedgerCheckResult:
    problems: list[str]
    mode: str                     # "full" or "incremental"
    reason: str                   # why this mode
    transactions_checked: int = 0
    entries_read: int = 0
    checkpoint_before: int = 0    # transaction id verified up to, before the check
    checkpoint_after: int | None = None  # ... after it (None: not moved)
    notes: list[str] = field(default_factory=list)


def ledger_check_run(*, full: bool = False, now: datetime, in_flight_wait_s: float = 10.0
                     ) -> LedgerCheckResult:
    """Verify the ledger against the lots and balances; from the checkpoint unless `full`
    (or a full check is due), moving the checkpoint when the books agree."""
    if connection.vendor != "postgresql":
        # The embedded first-look mode: no sequences to take a horizon from.
        return LedgerCheckResult(problems=ledger_discrepancies(), mode="full",
                                 reason="not PostgreSQL: every check is a full one")
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_lock(%s)", [LOCK_KEY])
        if not cursor.fetchone()[0]:
            raise LedgerCheckBusy("another ledger_check is running")
    try:
        return _run(full=full, now=now, in_flight_wait_s=in_flight_wait_s)
    finally:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_unlock(%s)", [LOCK_KEY])


def _last_ids(cursor) -> tuple[int, int]:
    """The last transaction and entry ids taken from their sequences (taken, whether or
    not their rows committed yet)."""
    last = []
    for table in ("billing_ledgertransaction", "billing_ledgerentry"):
        cursor.execute("SELECT pg_get_serial_sequence(%s, 'id')", [table])
        (sequence,) = cursor.fetchone()
        cursor.execute(f"SELECT last_value - CASE WHEN is_called THEN 0 ELSE 1 END "
                       f"FROM {sequence}")
        last.append(cursor.fetchone()[0])
    return last[0], last[1]


def _in_flight_wait(cursor, *, started_before, timeout_s: float) -> bool:
    """Wait until no transaction of this database that started before `started_before`
    could still write (one holding a transaction id, or running a statement). False:
    still some after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            " AND pid <> pg_backend_pid() AND backend_type = 'client backend'"
            " AND xact_start < %s AND (backend_xid IS NOT NULL OR state = 'active')",
            [started_before])
        if cursor.fetchone()[0] == 0:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.01)


def _run(*, full: bool, now: datetime, in_flight_wait_s: float) -> LedgerCheckResult:
    checkpoint = LedgerCheckpoint.objects.filter(id=1).first()
    rewrites = LedgerRewrite.objects.order_by("-id").values_list("id", flat=True).first() or 0
    if full:
        reason = "asked for a full check"
    elif checkpoint is None:
        full, reason = True, "no checkpoint yet"
    elif rewrites > checkpoint.rewrites_seen:
        full, reason = True, ("ledger rows were updated or deleted since the checkpoint "
                              "(billing_ledgerrewrite)")
    else:
        reason = (f"from the checkpoint: transactions after {checkpoint.through_transaction_id}"
                  f", entries after {checkpoint.through_entry_id}")
    after_txn = 0 if full else checkpoint.through_transaction_id
    after_entry = 0 if full else checkpoint.through_entry_id
    result = LedgerCheckResult(problems=[], mode="full" if full else "incremental",
                               reason=reason, checkpoint_before=after_txn)

    with connection.cursor() as cursor:
        cursor.execute("SELECT clock_timestamp()")
        (horizon_at,) = cursor.fetchone()
        horizon_txn, horizon_entry = _last_ids(cursor)
        settled = _in_flight_wait(cursor, started_before=horizon_at, timeout_s=in_flight_wait_s)
    if not settled:
        result.notes.append(f"transactions older than the check still open after "
                            f"{in_flight_wait_s:g} s: the checkpoint stays where it was")

    outermost = not connection.in_atomic_block
    with transaction.atomic(), connection.cursor() as cursor:
        if outermost:
            # One snapshot for the ledger, the lots and the balances.
            cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        cursor.execute("SET LOCAL work_mem = '256MB'")
        result.problems.extend(_unbalanced(cursor, after_txn=after_txn,
                                           after_entry=after_entry, result=result))

        # The customer books: the checkpoint's sums plus the entries since (up to the
        # horizon: `final`, kept in the new checkpoint; above it: counted, not kept),
        # compared in the database, which returns only what differs.
        cursor.execute(
            "CREATE TEMPORARY TABLE ledger_check_new ON COMMIT DROP AS"
            " SELECT account_id, book, lot_id, id <= %s AS final,"
            "        sum(amount_nanos) AS total, count(*) AS entries"
            " FROM billing_ledgerentry WHERE id > %s AND book = ANY(%s)"
            " GROUP BY account_id, book, lot_id, id <= %s",
            [horizon_entry, after_entry, list(CUSTOMER_BOOKS), horizon_entry])
        cursor.execute("SELECT coalesce(sum(entries), 0) FROM ledger_check_new")
        result.entries_read = int(cursor.fetchone()[0])
        result.problems.extend(_lot_mismatches(cursor, incremental=not full))
        result.problems.extend(_account_mismatches(cursor, incremental=not full))
        result.problems.extend(account_expiry_mismatches())

        if not result.problems and settled:
            _checkpoint_move(cursor, full=full, horizon_txn=horizon_txn,
                             horizon_entry=horizon_entry, rewrites=rewrites, now=now)
            result.checkpoint_after = horizon_txn
        cursor.execute("DROP TABLE ledger_check_new")
    return result


def _sums(*, incremental: bool) -> str:
    """SQL: the customer books' sums per account, book and lot, now."""
    checkpoint = (" UNION ALL SELECT account_id, book, lot_id, total_nanos"
                  " FROM billing_ledgercheckpointsum") if incremental else ""
    return ("SELECT account_id, book, lot_id, sum(total) AS total FROM ("
            "SELECT account_id, book, lot_id, total FROM ledger_check_new"
            f"{checkpoint}) AS parts GROUP BY account_id, book, lot_id")


def _lot_mismatches(cursor, *, incremental: bool) -> list[str]:
    """Each lot's remaining credit equals the sum of its customer_credit legs."""
    cursor.execute(
        f"WITH sums AS ({_sums(incremental=incremental)}),"
        " by_lot AS (SELECT lot_id, sum(total) AS total FROM sums"
        "            WHERE book = %s GROUP BY lot_id)"
        " SELECT coalesce(l.id, s.lot_id), l.id IS NULL, l.remaining_nanos,"
        "        coalesce(s.total, 0)"
        " FROM billing_creditlot l FULL JOIN by_lot s ON s.lot_id = l.id"
        " WHERE l.id IS NULL OR l.remaining_nanos <> coalesce(s.total, 0)",
        [Book.CUSTOMER_CREDIT])
    return [f"ledger credit legs name lot {lot_id}, which does not exist ({in_ledger})"
            if missing else f"lot {lot_id}: remaining {remaining} but ledger says {in_ledger}"
            for lot_id, missing, remaining, in_ledger in cursor.fetchall()]


def _account_mismatches(cursor, *, incremental: bool) -> list[str]:
    """Per account: ledger credit book == sum of lots' remaining == working balance, and
    the receivable book == -receivable (the messages of billing.selectors')."""
    cursor.execute(
        f"WITH sums AS ({_sums(incremental=incremental)}),"
        " books AS (SELECT account_id, sum(total) FILTER (WHERE book = %s) AS credit,"
        "                  sum(total) FILTER (WHERE book = %s) AS receivable"
        "           FROM sums GROUP BY account_id),"
        " lots AS (SELECT account_id, sum(remaining_nanos) AS total FROM billing_creditlot"
        "          GROUP BY account_id)"
        " SELECT a.id, a.balance_nanos, a.receivable_nanos, coalesce(b.credit, 0),"
        "        coalesce(l.total, 0), -coalesce(b.receivable, 0)"
        " FROM accounts_account a LEFT JOIN books b ON b.account_id = a.id"
        " LEFT JOIN lots l ON l.account_id = a.id"
        " WHERE coalesce(b.credit, 0) <> a.balance_nanos"
        "    OR coalesce(l.total, 0) <> a.balance_nanos"
        "    OR -coalesce(b.receivable, 0) <> a.receivable_nanos",
        [Book.CUSTOMER_CREDIT, Book.CUSTOMER_RECEIVABLE])
    problems = []
    for account_id, balance, receivable, credit, lot_credit, ledger_receivable in \
            cursor.fetchall():
        if not credit == lot_credit == balance:
            problems.append(f"account {account_id}: ledger credit {credit}, lots {lot_credit},"
                            f" working balance {balance}")
        if ledger_receivable != receivable:
            problems.append(f"account {account_id}: ledger receivable {ledger_receivable}, "
                            f"working receivable {receivable}")
    return problems


def _unbalanced(cursor, *, after_txn: int, after_entry: int, result: LedgerCheckResult):
    """Transactions after the checkpoint, and older ones with an entry after it, that do
    not sum to zero or have no entries (all of them when both are 0)."""
    if after_txn == 0 and after_entry == 0:
        touched = "SELECT id FROM billing_ledgertransaction"
        params = []
    else:
        touched = ("SELECT id FROM billing_ledgertransaction WHERE id > %s"
                   " UNION SELECT transaction_id FROM billing_ledgerentry WHERE id > %s")
        params = [after_txn, after_entry]
        cursor.execute(f"SELECT count(*) FROM ({touched}) AS touched", params)
        result.transactions_checked = cursor.fetchone()[0]
    cursor.execute(
        f"WITH touched AS ({touched})"
        " SELECT t.id, coalesce(sum(e.amount_nanos), 0), count(e.id)"
        " FROM touched t LEFT JOIN billing_ledgerentry e ON e.transaction_id = t.id"
        " GROUP BY t.id HAVING coalesce(sum(e.amount_nanos), 0) <> 0 OR count(e.id) = 0"
        " ORDER BY t.id", params)
    problems = []
    for txn_id, total, entries in cursor.fetchall():
        if entries == 0:
            problems.append(f"ledger transaction {txn_id} has no entries")
        else:
            problems.append(f"ledger transaction {txn_id} sums to {total}, not zero")
    return problems


def _checkpoint_move(cursor, *, full: bool, horizon_txn: int, horizon_entry: int,
                     rewrites: int, now: datetime) -> None:
    if full:
        cursor.execute("DELETE FROM billing_ledgercheckpointsum")
    cursor.execute(
        "INSERT INTO billing_ledgercheckpointsum (account_id, book, lot_id, total_nanos)"
        " SELECT account_id, book, lot_id, total FROM ledger_check_new WHERE final"
        " ON CONFLICT ON CONSTRAINT ledger_checkpoint_sum_unique DO UPDATE"
        " SET total_nanos = billing_ledgercheckpointsum.total_nanos + EXCLUDED.total_nanos")
    cursor.execute(
        "INSERT INTO billing_ledgercheckpoint (id, through_transaction_id, through_entry_id,"
        " rewrites_seen, checked_at, full_checked_at) VALUES (1, %s, %s, %s, %s, %s)"
        " ON CONFLICT (id) DO UPDATE SET through_transaction_id = EXCLUDED.through_transaction_id,"
        " through_entry_id = EXCLUDED.through_entry_id, rewrites_seen = EXCLUDED.rewrites_seen,"
        " checked_at = EXCLUDED.checked_at,"
        " full_checked_at = CASE WHEN %s THEN EXCLUDED.full_checked_at"
        "                   ELSE billing_ledgercheckpoint.full_checked_at END",
        [horizon_txn, horizon_entry, rewrites, now, now, full])
