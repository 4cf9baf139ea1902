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
from functools import cache
from uuid import UUID

import psycopg
from django.db import DEFAULT_DB_ALIAS, connection, connections, transaction

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
# expiry (billing/credit.py), the key's spend limit (ratelimits/key_limits.py);
# metering/authorize.py's _refusal puts them in order.
ACCOUNT_RULES = """
       status = 'active'
   AND balance_nanos - held_nanos >= %(reserve)s
   AND (%(weight)s = 0 OR slots_in_use + %(weight)s <= tier_concurrency)
   AND tier_max_params_b >= %(class_params_b)s
   AND credit_valid_until > %(now)s
   AND tier_valid_until > %(now)s
"""
KEY_USABLE = """
       k.id = %(key_id)s AND k.revoked_at IS NULL
   AND (k.expires_at IS NULL OR k.expires_at > %(now)s)
"""

# A key without a spend limit: one conditional UPDATE. (A key whose limit this process
# has not seen yet fails the last condition and takes the slow path.)
RESERVE_SQL = f"""
UPDATE accounts_account
   SET held_nanos = held_nanos + %(reserve)s,
       slots_in_use = slots_in_use + %(weight)s
 WHERE id = %(account_id)s
   AND {ACCOUNT_RULES}
   AND EXISTS (SELECT 1 FROM accounts_apikey k
                WHERE {KEY_USABLE} AND k.spend_limit_nanos IS NULL)
RETURNING balance_nanos, held_nanos, slots_in_use, tier_id, tier_max_params_b,
          tier_concurrency
"""

HOLD_COLUMNS = """id, account_id, api_key_id, model_id, request_id, kind, byok, status,
    reserved_nanos, weight, nanos_per_second, input_nanos_per_mtok, output_nanos_per_mtok,
    nanos_per_image, nanos_per_request, platform_fee_ppm, byok_fee_nanos, created_at,
    lease_expires_at"""

HOLD_VALUES = """%(hold_id)s, %(account_id)s, %(key_id)s, %(model_id)s, %(request_id)s,
    %(kind)s, %(byok)s, 'open', %(reserve)s, %(weight)s, %(nanos_per_second)s,
    %(input_nanos_per_mtok)s, %(output_nanos_per_mtok)s, %(nanos_per_image)s,
    %(nanos_per_request)s, %(platform_fee_ppm)s, %(byok_fee_nanos)s, %(now)s,
    %(lease_expires_at)s"""

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

# A key with a spend limit (the rule: ratelimits/key_limits.py): the same statement, and
# the key's counter for the period (ratelimits_keyspend) takes the reservation only if it
# stays within the limit. Every write to a key's counter holds its account's row lock, so
# the order is: lock the account row if every account rule holds (FOR NO KEY UPDATE
# re-reads a row changed since the statement began), then the counter's conditional
# upsert (ON CONFLICT works on the row's latest version), then, only if it took the
# reservation, the account's UPDATE and the hold. Nothing is written unless all pass.
# The key's limit and period must be the ones this process read (else the slow path).
LIMITED_KEY_USABLE = f"""
EXISTS (SELECT 1 FROM accounts_apikey k
         WHERE {KEY_USABLE} AND k.spend_limit_nanos = %(spend_limit)s
           AND k.spend_limit_period = %(spend_period)s)
"""

AUTHORIZE_LIMITED_PG = compact(f"""
WITH locked AS (
    SELECT id FROM accounts_account
     WHERE id = %(account_id)s AND {ACCOUNT_RULES} AND {LIMITED_KEY_USABLE}
       FOR NO KEY UPDATE
),
spend AS (
    INSERT INTO ratelimits_keyspend (api_key_id, period_start, spent_nanos)
    SELECT %(key_id)s, %(spend_period_start)s, %(reserve)s FROM locked
     WHERE %(reserve)s <= %(spend_limit)s
        ON CONFLICT (api_key_id, period_start) DO UPDATE
       SET spent_nanos = ratelimits_keyspend.spent_nanos + EXCLUDED.spent_nanos
     WHERE ratelimits_keyspend.spent_nanos + EXCLUDED.spent_nanos <= %(spend_limit)s
    RETURNING spent_nanos
),
acct AS (
    UPDATE accounts_account
       SET held_nanos = held_nanos + %(reserve)s,
           slots_in_use = slots_in_use + %(weight)s
     WHERE id = %(account_id)s AND EXISTS (SELECT 1 FROM spend)
    RETURNING balance_nanos, held_nanos, slots_in_use, tier_id, tier_max_params_b,
              tier_concurrency
),
hold AS (
    INSERT INTO metering_hold ({HOLD_COLUMNS}, spend_period_start)
    SELECT {HOLD_VALUES}, %(spend_period_start)s FROM acct
    RETURNING id
)
SELECT acct.balance_nanos, acct.held_nanos, acct.slots_in_use, acct.tier_max_params_b,
       acct.tier_concurrency, t.name
  FROM acct CROSS JOIN hold LEFT JOIN ratelimits_tier t ON t.id = acct.tier_id
""")

# Portable (SQLite): the account's UPDATE for a limited key; the counter follows in the
# same transaction (SQLite runs one writer at a time).
RESERVE_LIMITED_SQL = f"""
UPDATE accounts_account
   SET held_nanos = held_nanos + %(reserve)s,
       slots_in_use = slots_in_use + %(weight)s
 WHERE id = %(account_id)s AND {ACCOUNT_RULES} AND {LIMITED_KEY_USABLE}
RETURNING balance_nanos, held_nanos, slots_in_use, tier_id, tier_max_params_b,
          tier_concurrency
"""
KEY_SPEND_SQL = """SELECT spent_nanos FROM ratelimits_keyspend
 WHERE api_key_id = %(key_id)s AND period_start = %(spend_period_start)s"""
KEY_SPEND_INSERT_SQL = """INSERT INTO ratelimits_keyspend (api_key_id, period_start, spent_nanos)
VALUES (%(key_id)s, %(spend_period_start)s, %(reserve)s)"""
KEY_SPEND_ADD_SQL = """UPDATE ratelimits_keyspend SET spent_nanos = spent_nanos + %(reserve)s
 WHERE api_key_id = %(key_id)s AND period_start = %(spend_period_start)s"""
INSERT_LIMITED_HOLD_SQL = (f"INSERT INTO metering_hold ({HOLD_COLUMNS}, spend_period_start) "
                           f"VALUES ({HOLD_VALUES}, %(spend_period_start)s)")

INSERT_HOLD_SQL = f"INSERT INTO metering_hold ({HOLD_COLUMNS}) VALUES ({HOLD_VALUES})"
TIER_NAME_SQL = "SELECT name FROM ratelimits_tier WHERE id = %(tier_id)s"


@cache
def is_postgresql() -> bool:
    # The default database's engine is fixed for the life of the process: asked once, not
    # through the thread-local connection proxy on every run-path call.
    return connections[DEFAULT_DB_ALIAS].vendor == "postgresql"


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
    database = connections[DEFAULT_DB_ALIAS]  # this thread's, looked up once
    database.ensure_connection()
    with database.wrap_database_errors, psycopg.Cursor(database.connection) as cursor:
        yield cursor


def db_uuid(value: UUID):
    # PostgreSQL takes the UUID itself; the portable path stores 32 hex digits.
    return value if is_postgresql() else value.hex


def db_datetime(value):
    return value if is_postgresql() else connection.ops.adapt_datetimefield_value(value)


def authorize_reserve(params: dict) -> tuple | None:
    """Reserve and insert the hold if every rule holds. Returns (balance, held, slots,
    tier_max_params_b, tier_concurrency, tier_name), or None when a rule failed.
    Raises IntegrityError when the account already has a hold for this request_id.
    With params["spend_limit"] set, the key's spend limit is one of the rules."""
    limited = params.get("spend_limit") is not None
    if is_postgresql():
        with hot_cursor() as cursor:
            cursor.execute(AUTHORIZE_LIMITED_PG if limited else AUTHORIZE_PG, params)
            return cursor.fetchone()
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(RESERVE_LIMITED_SQL if limited else RESERVE_SQL, params)
        row = cursor.fetchone()
        if row is None:
            return None
        if limited:
            cursor.execute(KEY_SPEND_SQL, params)
            spent = cursor.fetchone()
            if (spent[0] if spent else 0) + params["reserve"] > params["spend_limit"]:
                transaction.set_rollback(True)  # the account's UPDATE too
                return None
            cursor.execute(KEY_SPEND_ADD_SQL if spent else KEY_SPEND_INSERT_SQL, params)
            cursor.execute(INSERT_LIMITED_HOLD_SQL, params)
        else:
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
    %(far_future)s::timestamptz, %(unit)s::text, %(units)s::numeric)
""")


def settle_postgresql(**params) -> tuple:
    """One statement (autocommit: its own transaction; in a caller's transaction, part of
    it). Returns metering_settle's row: (outcome, hold status, charged, billed seconds,
    unpaid, balance after, available after, low-balance event id, key id, spend period
    start, key spent after, key limit)."""
    with hot_cursor() as cursor:
        cursor.execute(SETTLE_CALL, {**params, "far_future": FAR_FUTURE})
        return cursor.fetchone()


# Group commit (metering/group_commit.py): several items in one statement, one commit. The
# functions are metering/group_commit_sql.py's; each item's answer is what its single
# statement would have answered (a refusal or a request_id seen before: None).
AUTHORIZE_ITEM_FIELDS = (
    ("hold_id", "uuid"), ("account_id", "uuid"), ("key_id", "uuid"), ("model_id", "text"),
    ("request_id", "text"), ("kind", "text"), ("byok", "boolean"), ("reserve", "bigint"),
    ("weight", "integer"), ("class_params_b", "numeric"), ("nanos_per_second", "bigint"),
    ("input_nanos_per_mtok", "bigint"), ("output_nanos_per_mtok", "bigint"),
    ("nanos_per_image", "bigint"), ("nanos_per_request", "bigint"),
    ("platform_fee_ppm", "integer"), ("byok_fee_nanos", "bigint"), ("now", "timestamptz"),
    ("lease_expires_at", "timestamptz"), ("spend_limit", "bigint"),
    ("spend_period", "text"), ("spend_period_start", "timestamptz"),
)
AUTHORIZE_BATCH_CALL = compact(f"""
SELECT out_outcome, out_balance_nanos, out_held_nanos, out_slots_in_use,
       out_tier_max_params_b, out_tier_concurrency, out_tier_name
  FROM metering_authorize_batch({", ".join(f"%({name})s::{kind}[]"
                                           for name, kind in AUTHORIZE_ITEM_FIELDS)})
 ORDER BY out_ord
""")


def authorize_reserve_batch(items: list[dict]) -> list[tuple | None]:
    """authorize_reserve for each item, in one statement (PostgreSQL, autocommit)."""
    arrays = {name: [item.get(name) for item in items] for name, _ in AUTHORIZE_ITEM_FIELDS}
    with hot_cursor() as cursor:
        cursor.execute(AUTHORIZE_BATCH_CALL, arrays)
        rows = cursor.fetchall()
    return [tuple(row[1:]) if row[0] == "reserved" else None for row in rows]


SETTLE_ITEM_FIELDS = ("hold_id", "now", "inference_seconds", "load_seconds", "input_tokens",
                      "output_tokens", "provider_cost_nanos", "unit", "units")
SETTLE_BATCH_CALL = compact("""
SELECT out_outcome, out_hold_status, out_charged_nanos, out_billed_seconds, out_unpaid_nanos,
       out_balance_after_nanos, out_available_after_nanos, out_low_balance_event_id,
       out_key_id, out_spend_period_start, out_key_spent_nanos, out_key_limit_nanos
  FROM metering_settle_batch(%(hold_id)s::uuid[], %(now)s::timestamptz[],
    %(late_window)s::interval, %(inference_seconds)s::numeric[],
    %(load_seconds)s::numeric[], %(input_tokens)s::bigint[], %(output_tokens)s::bigint[],
    %(provider_cost_nanos)s::bigint[], %(far_future)s::timestamptz, %(unit)s::text[],
    %(units)s::numeric[])
 ORDER BY out_ord
""")


def settle_postgresql_batch(items: list[dict]) -> list[tuple]:
    """settle_postgresql for each item (the same keyword arguments), in one statement."""
    late_windows = {item["late_window"] for item in items}
    if len(late_windows) != 1:
        raise ValueError("a settle batch shares one late-settle window")
    arrays = {name: [item[name] for item in items] for name in SETTLE_ITEM_FIELDS}
    with hot_cursor() as cursor:
        cursor.execute(SETTLE_BATCH_CALL, {**arrays, "late_window": late_windows.pop(),
                                           "far_future": FAR_FUTURE})
        return cursor.fetchall()
