"""The floor under authorize: one conditional UPDATE ... RETURNING round trip from psycopg
on a scratch table (one hot row), each statement its own committed transaction, as the
run path's fast path is. Measured from one connection, back to back."""

import time

import psycopg

from bench.server import CpuMeter
from bench.stats import latency_summary

# A new table for each measurement: the dead versions of the hot row that an earlier one
# left behind would otherwise slow it down.
SCHEMA_SQL = [
    "CREATE SCHEMA IF NOT EXISTS bench",
    "DROP TABLE IF EXISTS bench.scratch_account",
    "CREATE TABLE bench.scratch_account ("
    " id bigint PRIMARY KEY, balance bigint NOT NULL, held bigint NOT NULL)",
]
RESERVE_SQL = (
    "UPDATE bench.scratch_account SET held = held + %s"
    " WHERE id = %s AND balance - held >= %s RETURNING balance, held"
)
HOT_ROW = 1
AMOUNT = 2_160_000  # nano-dollars: 30 s of a 7B model


def server_settings(conn) -> dict:
    names = ("server_version", "synchronous_commit", "fsync", "wal_sync_method",
             "shared_buffers")
    return {name: conn.execute(f"SHOW {name}").fetchone()[0] for name in names}


def _table_fresh(conn) -> None:
    for statement in SCHEMA_SQL:
        conn.execute(statement)
    conn.execute("INSERT INTO bench.scratch_account VALUES (%s, %s, 0)", (HOT_ROW, 10**18))


def _measure(cursor, seconds: float, warmup: int) -> dict:
    _table_fresh(cursor.connection)
    params = (AMOUNT, HOT_ROW, AMOUNT)
    for _ in range(warmup):
        cursor.execute(RESERVE_SQL, params)
        cursor.fetchone()
    latencies = []
    clock = time.perf_counter_ns
    started = clock()
    deadline = started + int(seconds * 1e9)
    while True:
        t0 = clock()
        cursor.execute(RESERVE_SQL, params)
        if cursor.fetchone() is None:
            raise RuntimeError("the scratch row ran out of balance")
        t1 = clock()
        latencies.append(t1 - t0)
        if t1 >= deadline:
            break
    elapsed = (clock() - started) / 1e9
    return {"round_trips": len(latencies),
            "throughput_per_s": round(len(latencies) / elapsed, 1),
            "latency": latency_summary(latencies)}


def round_trip(database_url: str, *, seconds: float = 3.0, warmup: int = 500) -> dict:
    with psycopg.connect(database_url, autocommit=True) as conn:
        result = {"statement": RESERVE_SQL, "autocommit": True,
                  "postgres": server_settings(conn)}
        backend = conn.info.backend_pid
        meter = CpuMeter({"database": lambda: [backend]})
        meter.start()
        client_cpu = time.process_time()
        # psycopg's default: server-side binding, prepared after a few executions.
        result["prepared"] = _measure(conn.cursor(), seconds, warmup)
        # Django's default with psycopg 3: parameters bound client-side, not prepared.
        result["client_side_binding"] = _measure(psycopg.ClientCursor(conn), seconds, warmup)
        # The client is this process: its CPU stands in the generator's column.
        result["cpu"] = meter.stop(
            generator_cpu_seconds=time.process_time() - client_cpu,
            requests=result["prepared"]["round_trips"]
            + result["client_side_binding"]["round_trips"])
        return result
