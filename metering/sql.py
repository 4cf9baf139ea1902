"""The run path's statements, written as SQL because they are the hot path.

Authorize's fast path is one statement on PostgreSQL: a conditional UPDATE of the account
(reserve money and slots only if every rule holds) and the hold's INSERT, in one CTE. On
SQLite (the embedded first-look mode) the same two statements run in one transaction.

Settle, on PostgreSQL, is one round trip: BEGIN, lock the account row, one CTE that does
every write, COMMIT, sent together. The row lock (the hot account's serialisation point)
is then held only while the server works, never across a network round trip or this
process's own work. Other databases take the portable path in services.py.
"""

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


HOLD_ATTRIBUTES = (
    "id", "account_id", "api_key_id", "model_id", "request_id", "kind", "byok", "status",
    "reserved_nanos", "weight", "nanos_per_second", "input_nanos_per_mtok",
    "output_nanos_per_mtok", "platform_fee_ppm", "byok_fee_nanos", "created_at",
    "lease_expires_at", "charged_nanos", "billed_seconds", "unpaid_nanos",
    "balance_after_nanos", "available_after_nanos")

READ_HOLD_SQL = f"SELECT {', '.join(HOLD_ATTRIBUTES)} FROM metering_hold WHERE id = %(hold_id)s"


def hold_read(*, hold_id: UUID):
    """The hold, unlocked. Everything a settle prices from never changes after authorize;
    its status may change, and the settle statement re-checks it under the lock."""
    from metering.models import Hold

    if not is_postgresql():
        return Hold.objects.filter(id=hold_id).first()
    with hot_cursor() as cursor:
        cursor.execute(READ_HOLD_SQL, {"hold_id": hold_id})
        row = cursor.fetchone()
    return None if row is None else Hold(**dict(zip(HOLD_ATTRIBUTES, row, strict=True)))


LOCK_ACCOUNT_SQL = "SELECT 1 FROM accounts_account WHERE id = %(account_id)s FOR UPDATE"

# Runs right after LOCK_ACCOUNT_SQL, in the same transaction, so everything it reads is
# current: every write to an account's lots, holds and balance takes that lock first.
SETTLE_PG = """
WITH acct_now AS (
    SELECT held_nanos FROM accounts_account WHERE id = %(account_id)s
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
planned AS (
    SELECT COALESCE((SELECT SUM(remaining_nanos) FROM live), 0) AS live_credit,
           COALESCE((SELECT SUM(amount) FROM take), 0) AS covered
),
hold_upd AS (
    -- The balance reported is the live credit left: a lot that expired before its
    -- expiry was recorded is still in the working balance but no longer spendable.
    UPDATE metering_hold h
       SET status = 'settled', closed_at = %(now)s, charged_nanos = %(charge)s,
           billed_seconds = %(billed_seconds)s,
           unpaid_nanos = %(charge)s - planned.covered,
           balance_after_nanos = planned.live_credit - planned.covered,
           available_after_nanos = GREATEST(0, planned.live_credit - planned.covered
                                               - (acct_now.held_nanos - %(release_held)s))
      FROM planned, acct_now
     WHERE h.id = %(hold_id)s AND h.status = %(status_before)s
    RETURNING h.unpaid_nanos, h.balance_after_nanos, h.available_after_nanos
),
lots AS (
    UPDATE billing_creditlot l SET remaining_nanos = l.remaining_nanos - take.amount
      FROM take, hold_upd
     WHERE l.id = take.id
    RETURNING l.id, take.amount
),
acct AS (
    UPDATE accounts_account a
       SET balance_nanos = a.balance_nanos - planned.covered,
           held_nanos = a.held_nanos - %(release_held)s,
           slots_in_use = a.slots_in_use - %(release_slots)s,
           receivable_nanos = a.receivable_nanos + %(charge)s - planned.covered,
           credit_valid_until = COALESCE(
               (SELECT MIN(l.expires_at) FROM billing_creditlot l
                  LEFT JOIN take ON take.id = l.id
                 WHERE l.account_id = %(account_id)s
                   AND l.remaining_nanos - COALESCE(take.amount, 0) > 0),
               %(far_future)s)
      FROM planned, hold_upd
     WHERE a.id = %(account_id)s
    RETURNING a.balance_nanos, a.auto_reload_threshold_nanos
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
           planned.covered - %(charge)s
      FROM txn, planned WHERE planned.covered < %(charge)s
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
    SELECT %(hold_id)s, %(account_id)s, %(key_id)s, %(model_id)s, %(kind)s, %(byok)s,
           %(inference_seconds)s, %(load_seconds)s, %(billed_seconds)s, %(input_tokens)s,
           %(output_tokens)s, %(provider_cost_nanos)s, %(charge)s, hold_upd.unpaid_nanos,
           %(now)s
      FROM hold_upd
),
low_balance AS (
    -- The charge took the balance from at or above the auto-reload threshold to below
    -- it: the crossing is recorded in this same transaction.
    INSERT INTO billing_lowbalanceevent (account_id, threshold_nanos, balance_before_nanos,
        balance_after_nanos, created_at, outcome)
    SELECT %(account_id)s, acct.auto_reload_threshold_nanos,
           acct.balance_nanos + planned.covered, acct.balance_nanos, %(now)s, ''
      FROM acct, planned
     WHERE acct.auto_reload_threshold_nanos IS NOT NULL
       AND acct.balance_nanos + planned.covered >= acct.auto_reload_threshold_nanos
       AND acct.auto_reload_threshold_nanos > acct.balance_nanos
    RETURNING id
)
SELECT hold_upd.unpaid_nanos, hold_upd.balance_after_nanos, hold_upd.available_after_nanos,
       (SELECT id FROM low_balance)
  FROM hold_upd
"""


def settle_post_postgresql(params: dict) -> tuple | None:
    """Lock the account, post the settle and commit, in one round trip: the lock is held
    only while the server works, never while this process does. Returns (unpaid,
    balance_after, available_after, low_balance_event_id), or None when the hold was no
    longer in the status the caller read (nothing was written)."""
    connection.ensure_connection()
    raw = connection.connection
    with connection.wrap_database_errors, psycopg.Cursor(raw) as lock, \
            psycopg.Cursor(raw) as post:
        # psycopg's own transaction: BEGIN ... COMMIT (a savepoint inside a caller's
        # transaction), queued in the pipeline with the two statements.
        with raw.pipeline(), raw.transaction():
            lock.execute(LOCK_ACCOUNT_SQL, {"account_id": params["account_id"]})
            post.execute(SETTLE_PG, {**params, "far_future": FAR_FUTURE})
        return post.fetchone()
