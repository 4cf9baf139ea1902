"""The run path's statements, written as SQL because they are the hot path.

Authorize's fast path is one statement on PostgreSQL: a conditional UPDATE of the account
(reserve money and slots only if every rule holds) and the hold's INSERT, in one CTE. On
SQLite (the embedded first-look mode) the same two statements run in one transaction.

Settle, on PostgreSQL, is one statement: the database function metering_settle locks the
account row and does every write. The row lock (the hot account's serialisation point)
is then held only while the server works, never across a network round trip or this
process's own work. Other databases take the portable path in services.py.
"""

import re
from contextlib import contextmanager
from uuid import UUID

import psycopg
from django.db import connection, transaction

from accounts.models import FAR_FUTURE


def compact(statement: str) -> str:
    """The statement as sent: no comments, no runs of whitespace. psycopg caches the
    parsing of a statement's placeholders only up to 4096 characters, and parsing the
    settle statement again on every call cost more than the rest of its client work.
    (Run-path SQL keeps its string literals free of "--" and of repeated spaces.)"""
    lines = (line.split("--", 1)[0] for line in statement.splitlines())
    return re.sub(r"\s+", " ", " ".join(lines)).strip()


# The fast path's rules in SQL. Their Python statements, which the slow path uses and which
# name the refusal: the key (accounts.models.ApiKey.usable_at), the tier's model size
# (ratelimits/tiers.py), the slots (ratelimits/slots.py), the balance and the credit's
# expiry (billing/credit.py); metering/authorize.py's _refusal puts them in order.
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

AUTHORIZE_PG = compact(f"""
WITH acct AS ({RESERVE_SQL}),
hold AS (
    INSERT INTO metering_hold ({HOLD_COLUMNS})
    SELECT {HOLD_VALUES} FROM acct
    RETURNING id
)
SELECT acct.balance_nanos, acct.held_nanos, acct.slots_in_use, acct.tier_max_params_b,
       acct.tier_concurrency, t.name
  FROM acct CROSS JOIN hold LEFT JOIN ratelimits_tier t ON t.id = acct.tier_id
""")

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


# The settle is the database function metering_settle (metering/settle_sql.py holds its
# text): it locks the account, decides, prices and does every write, all in one statement.
SETTLE_CALL = compact("""
SELECT * FROM metering_settle(%(hold_id)s::uuid, %(now)s::timestamptz,
    %(late_window)s::interval, %(inference_seconds)s::numeric, %(load_seconds)s::numeric,
    %(input_tokens)s::bigint, %(output_tokens)s::bigint, %(provider_cost_nanos)s::bigint,
    %(far_future)s::timestamptz)
""")


def settle_postgresql(**params) -> tuple:
    """One statement (autocommit: its own transaction; in a caller's transaction, part of
    it). Returns metering_settle's row: (outcome, hold status, charged, billed seconds,
    unpaid, balance after, available after, low-balance event id)."""
    with hot_cursor() as cursor:
        cursor.execute(SETTLE_CALL, {**params, "far_future": FAR_FUTURE})
        return cursor.fetchone()
