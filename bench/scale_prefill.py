"""The scale step's database: accounts, a year of settled runs and closed holds, written in
SQL (INSERT ... SELECT generate_series) with the rows exactly as the run path writes them.

Every settled run is what metering_settle (metering/settle_sql.py) writes for an open model
whose credit covers the charge: the hold (settled, with its stored answer), its usage
record, a `usage` ledger transaction and its two legs (customer_credit out of the account's
lot, open_revenue in). Every account bought its credit once: a lot, its purchase, a
`purchase` transaction (customer_credit in, stripe_cash out) and an API key. The closed
holds are released or expired runs (no usage, no ledger). The lots' remaining credit, the
accounts' balances and the ledger agree, so `manage.py ledger_check` passes.

Account 1 (`scale-1@bench.invalid`) has `big_usage` runs over the last 365 days: the
dashboard's heavy account. The other runs are spread round-robin over the other accounts.

Speed: the four big tables (holds, usage, ledger transactions and entries) are loaded
without their indexes and constraints, which are rebuilt afterwards exactly as the
migrations defined them (their definitions are read from the catalog before the drop);
the load runs with `session_replication_role = replica`, so that the foreign-key and
ledger triggers do not fire row by row (the rows are consistent by construction, and
the foreign keys referring to these tables are validated again when they are re-added).

A finished prefill leaves its parameters in `bench_scale.prefill` (PREFILL_VERSION): a
later run with the same parameters reuses the database instead of filling it again."""

import time
from dataclasses import asdict, dataclass

import psycopg
from psycopg.types.json import Jsonb

PREFILL_VERSION = 1
MODEL = "bench/open-7b"           # the benchmark's own model (bench/provision.py)
NANOS_PER_SECOND = 72_000         # the 7B size class's price (metering/0002)
RESERVED_NANOS = 60 * NANOS_PER_SECOND  # the default estimate: 60 seconds
SPARE_NANOS = 100 * 10**9         # what each account still has left: $100
YEAR_S = 365 * 86_400
BIG_TABLES = ("metering_hold", "metering_usagerecord", "billing_ledgertransaction",
              "billing_ledgerentry")


@dataclass(frozen=True)
class Scale:
    accounts: int
    usage: int           # settled runs in all
    big_usage: int       # of which account 1's
    closed_holds: int
    chunk: int = 1_000_000  # runs written per transaction

    @property
    def other_usage(self) -> int:
        return self.usage - self.big_usage


FULL = Scale(accounts=100_000, usage=10_000_000, big_usage=1_000_000, closed_holds=1_000_000)
QUICK = Scale(accounts=1_000, usage=100_000, big_usage=20_000, closed_holds=10_000,
              chunk=50_000)




def _charges_of_first(k: str) -> str:
    """SQL: what an account's first k runs charged in all. Run p (0-based) bills
    1 + p % 10 seconds, so every ten runs bill 55."""
    return (f"{NANOS_PER_SECOND} * (55 * (({k}) / 10)"
            f" + (({k}) %% 10) * (({k}) %% 10 + 1) / 2)")


# Per run n (1-based): its account a, its position p among that account's runs, and how
# many runs the account has (cnt). Account 1 takes runs 1..big; the others round-robin.
RUN_COLUMNS = f"""
    SELECT n, a, p, cnt,
           md5('hold-' || n)::uuid AS hold_id,
           md5('acct-' || a)::uuid AS account_id,
           md5('key-' || a)::uuid AS api_key_id,
           md5('lot-' || a)::uuid AS lot_id,
           1 + p %% 10 AS billed_seconds,
           (1 + p %% 10) * {NANOS_PER_SECOND} AS charge,
           -- what the account had left after this run: its purchase minus the charges so
           -- far (the charges repeat 1..10 seconds: a closed form of their running sum)
           {SPARE_NANOS} + {_charges_of_first("cnt")} - {_charges_of_first("p + 1")}
             AS balance_after,
           %(t_end)s::timestamptz - make_interval(secs => {YEAR_S})
             + make_interval(secs => (p + 1)::float8 * {YEAR_S} / (cnt + 1)) AS at
      FROM (SELECT n, a, p,
                   CASE WHEN a = 1 THEN %(big)s::bigint
                        ELSE (%(other)s::bigint - (a - 2) + (%(accounts)s::bigint - 2))
                             / (%(accounts)s::bigint - 1) END AS cnt
              FROM (SELECT n,
                           CASE WHEN n <= %(big)s THEN 1
                                ELSE 2 + (n - %(big)s - 1) %% (%(accounts)s::bigint - 1)
                           END AS a,
                           CASE WHEN n <= %(big)s THEN n - 1
                                ELSE (n - %(big)s - 1) / (%(accounts)s::bigint - 1)
                           END AS p
                      FROM generate_series(%(lo)s::bigint, %(hi)s::bigint) AS n) AS g) AS r
"""

# Per account a: its runs (cnt) and their total charge (the closed form of RUN_COLUMNS).
ACCOUNT_COLUMNS = f"""
    SELECT a, md5('acct-' || a)::uuid AS account_id, md5('lot-' || a)::uuid AS lot_id,
           {SPARE_NANOS} + {_charges_of_first("cnt")} AS amount
      FROM (SELECT a, CASE WHEN a = 1 THEN %(big)s::bigint
                           ELSE (%(other)s::bigint - (a - 2) + (%(accounts)s::bigint - 2))
                                / (%(accounts)s::bigint - 1) END AS cnt
              FROM generate_series(1, %(accounts)s::bigint) AS a) AS s
"""

ACCOUNTS_SQL = [
    f"""INSERT INTO metering_inferencemodel (id, kind, params_b, provider, created_at,
            updated_at)
        VALUES ('{MODEL}', 'open', 7, '', now(), now()) ON CONFLICT (id) DO NOTHING""",
    """INSERT INTO accounts_user (id, password, is_superuser, email, is_staff, is_active,
            date_joined)
       SELECT a, '!', false, 'scale-' || a || '@bench.invalid', false, true, %(t_start)s
         FROM generate_series(1, %(accounts)s::bigint) AS a""",
    f"""INSERT INTO accounts_account (id, status, status_reason, created_at, balance_nanos,
            held_nanos, slots_in_use, credit_valid_until, receivable_nanos,
            tier_max_params_b, tier_concurrency, purchased_window_nanos, tier_valid_until,
            plan_id, tier_id, user_id, auto_reload_threshold_nanos)
        SELECT account_id, 'active', '', %(t_start)s, {SPARE_NANOS}, 0, 0, %(expires)s, 0,
               0, 0, 0, '9999-12-31T00:00:00Z', 'payg', NULL, a, NULL
          FROM ({ACCOUNT_COLUMNS}) AS s""",
    """INSERT INTO accounts_apikey (id, name, prefix, key_hash, created_at, account_id, kind,
            spend_limit_period)
       SELECT md5('key-' || a)::uuid, 'scale', 'sk_scale', md5('key-hash-' || a)
              || md5('key-hash-2-' || a), %(t_start)s, md5('acct-' || a)::uuid, 'inference', ''
         FROM generate_series(1, %(accounts)s::bigint) AS a""",
    f"""INSERT INTO billing_creditlot (id, source, amount_nanos, remaining_nanos, granted_at,
            expires_at, reason, account_id)
        SELECT lot_id, 'purchase', amount, {SPARE_NANOS}, %(t_start)s, %(expires)s, '',
               account_id
          FROM ({ACCOUNT_COLUMNS}) AS s""",
    f"""INSERT INTO billing_purchase (id, kind, amount_nanos, refunded_nanos, reference,
            purchased_at, account_id, lot_id)
        SELECT md5('purchase-' || a)::uuid, 'stripe', amount, 0, 'pi_scale_' || a,
               %(t_start)s, account_id, lot_id
          FROM ({ACCOUNT_COLUMNS}) AS s""",
    # Purchase a: ledger transaction a, legs 2a-1 and 2a.
    """INSERT INTO billing_ledgertransaction (id, kind, memo, created_at, account_id)
       SELECT a, 'purchase', 'Credit purchase', %(t_start)s, md5('acct-' || a)::uuid
         FROM generate_series(1, %(accounts)s::bigint) AS a""",
    f"""INSERT INTO billing_ledgerentry (id, book, amount_nanos, account_id, lot_id,
            transaction_id)
        SELECT 2 * a - 1, 'customer_credit', amount, account_id, lot_id, a
          FROM ({ACCOUNT_COLUMNS}) AS s
        UNION ALL
        SELECT 2 * a, 'stripe_cash', -amount, NULL, NULL, a
          FROM ({ACCOUNT_COLUMNS}) AS s""",
]

# One chunk of settled runs [lo, hi]: run n's ledger transaction is accounts + n.
RUNS_SQL = [
    f"""INSERT INTO metering_hold (id, request_id, kind, byok, status, reserved_nanos, weight,
            nanos_per_second, input_nanos_per_mtok, output_nanos_per_mtok, platform_fee_ppm,
            byok_fee_nanos, created_at, lease_expires_at, closed_at, charged_nanos,
            account_id, api_key_id, model_id, available_after_nanos, balance_after_nanos,
            billed_seconds, unpaid_nanos, spend_period_start)
        SELECT hold_id, 'scale-' || n, 'open', false, 'settled', {RESERVED_NANOS}, 1,
               {NANOS_PER_SECOND}, NULL, NULL, 0, 0,
               at - make_interval(secs => billed_seconds::float8), at + interval '5 minutes', at,
               charge, account_id, api_key_id, '{MODEL}',
               balance_after, balance_after, billed_seconds, 0, NULL
          FROM ({RUN_COLUMNS}) AS r""",
    f"""INSERT INTO metering_usagerecord (id, kind, byok, inference_seconds, load_seconds,
            billed_seconds, input_tokens, output_tokens, provider_cost_nanos, charged_nanos,
            unpaid_nanos, created_at, account_id, api_key_id, hold_id, model_id, unit, units)
        SELECT n, 'open', false, billed_seconds - 0.5, 0, billed_seconds, NULL, NULL, NULL,
               charge, 0, at, account_id, api_key_id, hold_id, '{MODEL}', '', NULL
          FROM ({RUN_COLUMNS}) AS r""",
    f"""INSERT INTO billing_ledgertransaction (id, kind, memo, created_at, account_id)
        SELECT %(accounts)s::bigint + n, 'usage', '{MODEL} run scale-' || n, at, account_id
          FROM ({RUN_COLUMNS}) AS r""",
    f"""INSERT INTO billing_ledgerentry (id, book, amount_nanos, account_id, lot_id,
            transaction_id)
        SELECT 2 * (%(accounts)s::bigint + n) - 1, 'customer_credit', -charge, account_id,
               lot_id, %(accounts)s::bigint + n
          FROM ({RUN_COLUMNS}) AS r
        UNION ALL
        SELECT 2 * (%(accounts)s::bigint + n), 'open_revenue', charge, account_id, NULL,
               %(accounts)s::bigint + n
          FROM ({RUN_COLUMNS}) AS r""",
]

# Closed holds [lo, hi]: released or expired runs, round-robin over the accounts.
CLOSED_SQL = f"""
    INSERT INTO metering_hold (id, request_id, kind, byok, status, reserved_nanos, weight,
        nanos_per_second, input_nanos_per_mtok, output_nanos_per_mtok, platform_fee_ppm,
        byok_fee_nanos, created_at, lease_expires_at, closed_at, account_id, api_key_id,
        model_id)
    SELECT md5('closed-' || n)::uuid, 'scale-closed-' || n, 'open', false,
           CASE WHEN n %% 2 = 0 THEN 'released' ELSE 'expired' END, {RESERVED_NANOS}, 1,
           {NANOS_PER_SECOND}, NULL, NULL, 0, 0, at, at + interval '5 minutes',
           at + CASE WHEN n %% 2 = 0 THEN interval '1 minute' ELSE interval '5 minutes' END,
           md5('acct-' || a)::uuid, md5('key-' || a)::uuid, '{MODEL}'
      FROM (SELECT n, 1 + (n - 1) %% %(accounts)s::bigint AS a,
                   %(t_end)s::timestamptz - make_interval(secs => {YEAR_S})
                     + make_interval(secs => n::float8 * {YEAR_S} / (%(closed)s::bigint + 1))
                     AS at
              FROM generate_series(%(lo)s::bigint, %(hi)s::bigint) AS n) AS c"""


def _dropped_definitions(conn) -> tuple[list, list, list]:
    """The big tables' keys and unique constraints, their other indexes, and the foreign
    keys that refer to them, as (table, name, definition) for re-creating them."""
    tables = list(BIG_TABLES)
    keys = conn.execute(
        "SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid) FROM pg_constraint"
        " WHERE conrelid = ANY(%s::regclass[]) AND contype IN ('p', 'u')", (tables,)).fetchall()
    foreign = conn.execute(
        "SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid) FROM pg_constraint"
        " WHERE confrelid = ANY(%s::regclass[]) AND contype = 'f'", (tables,)).fetchall()
    indexes = conn.execute(
        "SELECT i.indrelid::regclass::text, c.relname, pg_get_indexdef(i.indexrelid)"
        " FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid"
        " WHERE i.indrelid = ANY(%s::regclass[])"
        " AND NOT EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conindid = i.indexrelid)",
        (tables,)).fetchall()
    return keys, indexes, foreign


def prefilled(conn, scale: Scale) -> dict | None:
    """The finished prefill's record, if this database holds this scale's."""
    exists = conn.execute("SELECT to_regclass('bench_scale.prefill')").fetchone()[0]
    if not exists:
        return None
    row = conn.execute(
        "SELECT version, params, seconds, finished_at FROM bench_scale.prefill"
        " WHERE finished_at IS NOT NULL").fetchone()
    if row is None or row[0] != PREFILL_VERSION or row[1] != asdict(scale):
        return None
    return {"version": row[0], "params": row[1], "seconds": row[2],
            "finished_at": row[3].isoformat(timespec="seconds")}


def prefill(conninfo: str, scale: Scale, *, log=print) -> float:
    """Fill a freshly migrated database; returns the seconds it took."""
    started = time.monotonic()
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute("SET session_replication_role = replica")
        conn.execute("SET maintenance_work_mem = '512MB'")
        conn.execute("SET statement_timeout = 0")
        conn.execute("CREATE SCHEMA IF NOT EXISTS bench_scale")
        conn.execute("DROP TABLE IF EXISTS bench_scale.prefill")
        conn.execute("CREATE TABLE bench_scale.prefill (version integer NOT NULL,"
                     " params jsonb NOT NULL, seconds float8, finished_at timestamptz)")
        t_end = conn.execute("SELECT date_trunc('second', now())").fetchone()[0]
        params = {"accounts": scale.accounts, "big": scale.big_usage,
                  "other": scale.other_usage, "closed": scale.closed_holds, "t_end": t_end,
                  "t_start": conn.execute("SELECT %s::timestamptz - interval '366 days'",
                                          (t_end,)).fetchone()[0],
                  "expires": conn.execute("SELECT %s::timestamptz + interval '28 days'",
                                          (t_end,)).fetchone()[0]}
        with conn.transaction():
            for statement in ACCOUNTS_SQL:
                conn.execute(statement, params)
        log(f"  accounts: {scale.accounts:,} ({time.monotonic() - started:.0f} s)")

        keys, indexes, foreign = _dropped_definitions(conn)
        with conn.transaction():
            for table, name, _ in foreign:
                conn.execute(f'ALTER TABLE {table} DROP CONSTRAINT "{name}"')
            for table, name, _ in keys:
                conn.execute(f'ALTER TABLE {table} DROP CONSTRAINT "{name}"')
            for _, name, _ in indexes:
                conn.execute(f'DROP INDEX "{name}"')

        for lo in range(1, scale.usage + 1, scale.chunk):
            hi = min(scale.usage, lo + scale.chunk - 1)
            with conn.transaction():
                for statement in RUNS_SQL:
                    conn.execute(statement, {**params, "lo": lo, "hi": hi})
            log(f"  settled runs: {hi:,} of {scale.usage:,} "
                f"({time.monotonic() - started:.0f} s)")
        for lo in range(1, scale.closed_holds + 1, scale.chunk):
            hi = min(scale.closed_holds, lo + scale.chunk - 1)
            with conn.transaction():
                conn.execute(CLOSED_SQL, {**params, "lo": lo, "hi": hi})
        log(f"  closed holds: {scale.closed_holds:,} ({time.monotonic() - started:.0f} s)")

        for table, name, definition in keys:
            conn.execute(f'ALTER TABLE {table} ADD CONSTRAINT "{name}" {definition}')
        for _, _, definition in indexes:
            conn.execute(definition)
        log(f"  indexes rebuilt ({time.monotonic() - started:.0f} s)")
        conn.execute("SET session_replication_role = origin")
        for table, name, definition in foreign:
            conn.execute(f'ALTER TABLE {table} ADD CONSTRAINT "{name}" {definition}')
        log(f"  foreign keys checked ({time.monotonic() - started:.0f} s)")

        # The ids the load chose itself: the next ones continue after them.
        for table in ("accounts_user", "billing_ledgertransaction", "billing_ledgerentry",
                      "metering_usagerecord"):
            (next_id,) = conn.execute(f"SELECT coalesce(max(id), 0) + 1 FROM {table}").fetchone()
            conn.execute(f"ALTER TABLE {table} ALTER COLUMN id RESTART WITH {int(next_id)}")
        for table in ("accounts_user", "accounts_account", "billing_creditlot",
                      *BIG_TABLES):
            conn.execute(f"VACUUM (ANALYZE) {table}")
        seconds = time.monotonic() - started
        conn.execute("INSERT INTO bench_scale.prefill VALUES (%s, %s, %s, now())",
                     (PREFILL_VERSION, Jsonb(asdict(scale)), seconds))
        log(f"  analysed; prefill done in {seconds:.0f} s")
    return seconds
