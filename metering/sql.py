"""The run path's statements, written as SQL because they are the hot path.

Authorize's fast path is one statement on PostgreSQL: a conditional UPDATE of the account
(reserve money and slots only if every rule holds) and the hold's INSERT, in one CTE. On
SQLite (the embedded first-look mode) the same two statements run in one transaction.
Settle's write is one CTE on PostgreSQL, run after the account row is locked so that
everything it reads is current; other databases take the portable path in services.py.
"""

import json
from contextlib import contextmanager
from uuid import UUID

import psycopg
from django.db import connection, transaction

from accounts.models import FAR_FUTURE

RESERVE_SQL = """
UPDATE accounts_account
   SET held_nanos = held_nanos + %(reserve)s,
       slots_in_use = slots_in_use + %(weight)s
 WHERE id = %(account_id)s
   AND status = 'active'
   AND balance_nanos - held_nanos >= %(reserve)s
   AND (%(weight)s = 0 OR slots_in_use + %(weight)s <= tier_concurrency)
   AND tier_max_params_b >= %(class_params_b)s
   AND credit_valid_until > %(now)s
   AND tier_valid_until > %(now)s
   AND EXISTS (SELECT 1 FROM accounts_apikey k
                WHERE k.id = %(key_id)s AND k.revoked_at IS NULL
                  AND (k.expires_at IS NULL OR k.expires_at > %(now)s))
RETURNING balance_nanos, held_nanos, slots_in_use, tier_id, tier_max_params_b,
          tier_concurrency
"""

HOLD_COLUMNS = """id, account_id, api_key_id, model_id, request_id, kind, byok, status,
    reserved_nanos, weight, nanos_per_second, input_nanos_per_mtok, output_nanos_per_mtok,
    platform_fee_ppm, byok_fee_nanos, created_at, lease_expires_at"""

HOLD_VALUES = """%(hold_id)s, %(account_id)s, %(key_id)s, %(model_id)s, %(request_id)s,
    %(kind)s, %(byok)s, 'open', %(reserve)s, %(weight)s, %(nanos_per_second)s,
    %(input_nanos_per_mtok)s, %(output_nanos_per_mtok)s, %(platform_fee_ppm)s,
    %(byok_fee_nanos)s, %(now)s, %(lease_expires_at)s"""

AUTHORIZE_PG = f"""
WITH acct AS ({RESERVE_SQL}),
hold AS (
    INSERT INTO metering_hold ({HOLD_COLUMNS})
    SELECT {HOLD_VALUES} FROM acct
    RETURNING id
)
SELECT acct.balance_nanos, acct.held_nanos, acct.slots_in_use, acct.tier_max_params_b,
       acct.tier_concurrency, t.name
  FROM acct CROSS JOIN hold LEFT JOIN ratelimits_tier t ON t.id = acct.tier_id
"""

INSERT_HOLD_SQL = f"INSERT INTO metering_hold ({HOLD_COLUMNS}) VALUES ({HOLD_VALUES})"
TIER_NAME_SQL = "SELECT name FROM ratelimits_tier WHERE id = %(tier_id)s"


def is_postgresql() -> bool:
    return connection.vendor == "postgresql"


@contextmanager
def pipelined():
    """On PostgreSQL, send statements without waiting for each answer until a result is
    needed (psycopg's pipeline mode): a transaction's BEGIN travels with its first
    statement instead of costing a round trip of its own."""
    if not is_postgresql():
        yield
        return
    connection.ensure_connection()
    with connection.connection.pipeline():
        yield


@contextmanager
def hot_cursor():
    """A cursor for the run path's statements. On PostgreSQL it binds parameters on the
    server, so psycopg prepares each statement once per connection and the server stops
    re-planning the long CTEs on every call (planning cost more than executing). Errors
    come out as Django's (IntegrityError and the like), as from any other cursor."""
    if not is_postgresql():
        with connection.cursor() as cursor:
            yield cursor
        return
    connection.ensure_connection()
    with connection.wrap_database_errors, psycopg.Cursor(connection.connection) as cursor:
        yield cursor


def db_uuid(value: UUID):
    return value if connection.features.has_native_uuid_field else value.hex


def db_datetime(value):
    return connection.ops.adapt_datetimefield_value(value)


def authorize_reserve(params: dict) -> tuple | None:
    """Reserve and insert the hold if every rule holds. Returns (balance, held, slots,
    tier_max_params_b, tier_concurrency, tier_name), or None when a rule failed.
    Raises IntegrityError when the account already has a hold for this request_id."""
    if is_postgresql():
        with hot_cursor() as cursor:
            cursor.execute(AUTHORIZE_PG, params)
            return cursor.fetchone()
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(RESERVE_SQL, params)
        row = cursor.fetchone()
        if row is None:
            return None
        cursor.execute(INSERT_HOLD_SQL, params)
        cursor.execute(TIER_NAME_SQL, {"tier_id": row[3]})
        tier = cursor.fetchone()
        return (*row[:3], row[4], row[5], tier[0] if tier else None)


HOLD_ATTRIBUTES = ("id", "account_id", "api_key_id", "model_id", "request_id", "kind", "byok",
               "status", "reserved_nanos", "weight", "nanos_per_second",
               "input_nanos_per_mtok", "output_nanos_per_mtok", "platform_fee_ppm",
               "byok_fee_nanos", "created_at", "lease_expires_at", "settle_result")

LOCK_ACCOUNT_READ_HOLD_SQL = f"""
SELECT {", ".join(f"h.{name}" for name in HOLD_ATTRIBUTES)},
       a.balance_nanos, a.held_nanos, a.credit_valid_until, a.auto_reload_threshold_nanos
  FROM metering_hold h JOIN accounts_account a ON a.id = h.account_id
 WHERE h.id = %(hold_id)s
   FOR UPDATE OF a
"""


def settle_lock_and_read(*, hold_id: UUID):
    """Lock the hold's account and read the hold. Returns (hold, balance, held,
    credit_valid_until, auto_reload_threshold) or None for no such hold.

    On PostgreSQL this is one statement; the hold's status may then be stale (read before
    the lock was granted), which the settle statement re-checks. Every other field of a
    hold never changes after authorize, except the lease (heartbeat)."""
    from accounts.models import Account
    from metering.models import Hold

    if not is_postgresql():
        hold = Hold.objects.filter(id=hold_id).first()
        if hold is None:
            return None
        account = Account.objects.select_for_update().get(id=hold.account_id)
        return (hold, account.balance_nanos, account.held_nanos, account.credit_valid_until,
                account.auto_reload_threshold_nanos)
    with hot_cursor() as cursor:
        cursor.execute(LOCK_ACCOUNT_READ_HOLD_SQL, {"hold_id": hold_id})
        row = cursor.fetchone()
    if row is None:
        return None
    hold = Hold(**dict(zip(HOLD_ATTRIBUTES, row, strict=False)))
    if isinstance(hold.settle_result, str):  # Django has psycopg hand jsonb back as text
        hold.settle_result = json.loads(hold.settle_result)
    return (hold, *row[len(HOLD_ATTRIBUTES):])


SETTLE_PG = """
WITH hold_upd AS (
    UPDATE metering_hold
       SET status = 'settled', closed_at = %(now)s, charged_nanos = %(charge)s,
           settle_result = %(result)s::jsonb
     WHERE id = %(hold_id)s AND status = %(status_before)s
    RETURNING id
),
live AS (
    SELECT id, remaining_nanos,
           SUM(remaining_nanos) OVER (ORDER BY expires_at, id) - remaining_nanos AS before
      FROM billing_creditlot
     WHERE account_id = %(account_id)s AND remaining_nanos > 0 AND expires_at > %(now)s
),
take AS (
    SELECT id, LEAST(remaining_nanos, %(charge)s - before) AS amount
      FROM live WHERE before < %(charge)s
),
lots AS (
    UPDATE billing_creditlot l SET remaining_nanos = l.remaining_nanos - take.amount
      FROM take, hold_upd
     WHERE l.id = take.id
    RETURNING l.id, take.amount
),
covered AS (SELECT COALESCE(SUM(amount), 0) AS amount FROM lots),
acct AS (
    UPDATE accounts_account a
       SET balance_nanos = a.balance_nanos - covered.amount,
           held_nanos = a.held_nanos - %(release_held)s,
           slots_in_use = a.slots_in_use - %(release_slots)s,
           receivable_nanos = a.receivable_nanos + %(charge)s - covered.amount,
           credit_valid_until = COALESCE(
               (SELECT MIN(l.expires_at) FROM billing_creditlot l
                  LEFT JOIN take ON take.id = l.id
                 WHERE l.account_id = %(account_id)s
                   AND l.remaining_nanos - COALESCE(take.amount, 0) > 0),
               %(far_future)s)
      FROM covered, hold_upd
     WHERE a.id = %(account_id)s
    RETURNING covered.amount
),
txn AS (
    -- A run charged nothing (a BYOK run at a zero fee, zero seconds) moves no value: no
    -- ledger transaction, since every transaction needs a non-zero leg.
    INSERT INTO billing_ledgertransaction (account_id, kind, memo, created_at)
    SELECT %(account_id)s, 'usage', %(memo)s, %(now)s FROM hold_upd WHERE %(charge)s > 0
    RETURNING id
),
entries AS (
    INSERT INTO billing_ledgerentry (transaction_id, book, account_id, lot_id, amount_nanos)
    SELECT txn.id, 'customer_credit', %(account_id)s, lots.id, -lots.amount FROM txn, lots
    UNION ALL
    SELECT txn.id, 'customer_receivable', %(account_id)s, NULL,
           covered.amount - %(charge)s
      FROM txn, covered WHERE covered.amount < %(charge)s
    UNION ALL
    SELECT txn.id, revenue.book, %(account_id)s, NULL, revenue.amount
      FROM txn, (VALUES (%(book_1)s, %(amount_1)s::bigint),
                        (%(book_2)s, %(amount_2)s::bigint)) AS revenue (book, amount)
     WHERE revenue.amount <> 0
),
usage AS (
    INSERT INTO metering_usagerecord (hold_id, account_id, api_key_id, model_id, kind, byok,
        inference_seconds, load_seconds, billed_seconds, input_tokens, output_tokens,
        provider_cost_nanos, charged_nanos, unpaid_nanos, created_at)
    SELECT hold_upd.id, %(account_id)s, %(key_id)s, %(model_id)s, %(kind)s, %(byok)s,
           %(inference_seconds)s, %(load_seconds)s, %(billed_seconds)s, %(input_tokens)s,
           %(output_tokens)s, %(provider_cost_nanos)s, %(charge)s, %(unpaid)s, %(now)s
      FROM hold_upd
)
SELECT amount FROM acct
"""


def settle_write_postgresql(params: dict) -> int | None:
    """Post a settle inside the caller's transaction, the account row already locked.
    Returns the credit covered, or None when the hold was no longer in the expected
    status."""
    with hot_cursor() as cursor:
        cursor.execute(SETTLE_PG, {**params, "far_future": FAR_FUTURE})
        row = cursor.fetchone()
    return None if row is None else row[0]
