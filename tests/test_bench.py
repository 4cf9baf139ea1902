"""The benchmark's own arithmetic and schedule (no timing assertions: the benchmark is
never part of the tests; these check that what it reports is computed right)."""

import json
import os
import shutil
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace

import pytest

from bench import loadgen, pg_phases, profiler, report
from bench.scale import database_url_renamed
from bench.server import ROOT
from bench.stats import (
    KIND_AUTHORIZE,
    KIND_SETTLE,
    RECORD,
    Record,
    latency_summary,
    percentile,
    records_parse,
    step_summary,
)

MS = 1_000_000


def test_percentile_is_nearest_rank():
    # given 1..100
    values = list(range(1, 101))
    # then each percentile is an observed value, p100 the maximum
    assert percentile(values, 50) == 50
    assert percentile(values, 99) == 99
    assert percentile(values, 99.9) == 100
    assert percentile(values, 100) == 100
    assert percentile([7], 1) == 7
    assert percentile([], 50) is None
    with pytest.raises(ValueError):
        percentile(values, 0)


def test_latency_summary_in_milliseconds():
    summary = latency_summary([3 * MS, 1 * MS, 2 * MS])
    assert summary == {"count": 3, "p50_ms": 2.0, "p90_ms": 3.0, "p99_ms": 3.0,
                       "p999_ms": 3.0, "max_ms": 3.0, "mean_ms": 2.0}


def record(kind, status, unit, sched, done, *, measured=True, origin=None):
    return Record(kind, measured, status, unit, sched, sched, sched, done,
                  sched if origin is None else origin)


def test_pair_latency_runs_from_the_authorize_due_time_and_failures_are_counted():
    # given two measured pairs (one whose authorize was refused) and one warm-up pair
    records = [
        record(KIND_AUTHORIZE, 200, 0, 0, 1 * MS, measured=False),
        record(KIND_SETTLE, 200, 0, 1 * MS, 2 * MS, measured=False, origin=0),
        record(KIND_AUTHORIZE, 200, 1, 10 * MS, 14 * MS),
        record(KIND_SETTLE, 200, 1, 14 * MS, 15 * MS, origin=10 * MS),
        record(KIND_AUTHORIZE, 429, 2, 12 * MS, 13 * MS),
    ]
    data = b"".join(RECORD.pack(r.kind, r.measured, r.status, r.unit, r.sched_ns, r.issue_ns,
                                r.sent_ns, r.done_ns, r.origin_ns) for r in records)
    # when the step is summarised over a one-second window
    summary = step_summary(records_parse(data), scenario="pair", windows=[[0, 10**9]])
    # then the pair took 5 ms from its due time, the refusal is an error, not a latency,
    # and the warm-up pair is left out
    assert summary["pairs"]["latency"]["p50_ms"] == 5.0
    assert summary["pairs"]["ok"] == 1
    assert summary["pairs"]["achieved_rate"] == 1.0
    assert summary["pairs"]["errors"] == {"429": 1}
    assert summary["authorize"]["latency"]["count"] == 1
    assert summary["authorize"]["latency"]["p50_ms"] == 4.0
    assert summary["settle"]["latency"]["p50_ms"] == 1.0


def test_targets_are_not_met_by_missing_numbers():
    # given a run without the run path
    results = {"baseline": {}, "service": {"skipped": "no run path"}}
    # then no target is marked met or missed
    assert {row["met"] for row in report.targets(results, hot_account=True)} == {None}


def _pairs_step(achieved: float, authorize_p50: float, authorize_p99: float,
                settle_p50: float, settle_p99: float, errors: dict | None = None) -> dict:
    def latency(p50, p99):
        return {"latency": {"p50_ms": p50, "p99_ms": p99}, "achieved_rate": achieved,
                "errors": errors or {}}

    return {"pairs": latency(authorize_p50 + settle_p50, settle_p99),
            "authorize": latency(authorize_p50, authorize_p99),
            "settle": latency(settle_p50, settle_p99)}


def test_targets_from_one_run_with_ratios():
    # given a run: empty view max 4,000/s; authorize max 2,400/s, settle max 1,600/s,
    # pairs max 1,000/s; 1,000 pairs/s kept with p99 12 ms; 1,500 pairs/s not kept
    results = {
        "baseline": {"empty_view": {"max": {"requests": {"achieved_rate": 4000.0}}}},
        "service": {
            "authorize": {"max": {"authorize": {"achieved_rate": 2400.0}}},
            "settle": {"max": {"settle": {"achieved_rate": 1600.0}}},
            "pairs": {"500": _pairs_step(500.0, 0.8, 4.0, 1.6, 4.0),
                      "1000": _pairs_step(999.5, 1.0, 12.0, 1.2, 11.0),
                      "1500": _pairs_step(1200.0, 9.0, 80.0, 9.0, 90.0, {"abandoned": 3}),
                      "max": _pairs_step(1000.0, 1.0, 5.0, 1.0, 5.0)},
        },
    }
    # when the targets are computed
    rows = {row["target"].split(" (")[0]: row for row in
            report.targets(results, hot_account=True)}
    # then each says met or not, with its ratio
    authorize = rows["authorize max throughput >= 0.5 x the empty view's"]
    assert authorize["met"] is True and authorize["measured"].startswith("0.60 x")
    settle = rows["settle max throughput >= 0.5 x the empty view's"]
    assert settle["met"] is False and settle["measured"].startswith("0.40 x")
    pairs = rows["pairs max throughput x2 >= 0.5 x the empty view's"]
    assert pairs["met"] is True and pairs["measured"].startswith("0.50 x")
    sustained = [row for name, row in rows.items() if name.startswith(">= 1,000")]
    stretch = [row for name, row in rows.items() if name.startswith(">= 1,500")]
    assert [row["met"] for row in sustained] == [True]
    assert [row["met"] for row in stretch] == [False]
    assert rows["authorize p50 <= 1.0 ms at 500 pairs/s offered"]["met"] is True
    assert rows["authorize p99 <= 5 ms at 500 pairs/s offered"]["met"] is True
    assert rows["settle p50 <= 1.5 ms at 500 pairs/s offered"]["met"] is False
    # and a run on several accounts does not claim the hot-account targets
    spread = report.targets(results, hot_account=False)
    assert {row["met"] for row in spread if "hot account" in row["target"]} == {None}


class Ok(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args):
        pass


@pytest.mark.skipif(not (shutil.which("cc") or shutil.which("gcc")), reason="no C compiler")
def test_load_generator_sends_on_a_fixed_schedule(tmp_path):
    # given a local HTTP server
    server = ThreadingHTTPServer(("127.0.0.1", 0), Ok)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        # when the generator offers 100 requests a second for 0.1 s after a 0.1 s warm-up
        run = loadgen.run(loadgen.build(tmp_path), port=server.server_address[1],
                          scenario="get", rate=100, duration=0.1, warmup=0.1, timeout=5)
    finally:
        server.shutdown()
    # then request i was due exactly i/rate after the first, whenever it was sent,
    # the first 10 are warm-up, and every one was answered
    in_order = sorted(run.records, key=lambda r: r.unit)
    assert [r.sched_ns - in_order[0].sched_ns for r in in_order] == \
        [i * 10 * MS for i in range(20)]
    assert [r.measured for r in in_order] == [False] * 10 + [True] * 10
    assert {r.status for r in run.records} == {200}
    assert run.summary["requests_sent"] == 20


def _database_url(name: str) -> str:
    base = os.environ.get("DATABASE_URL") or "postgres://postgres@127.0.0.1:5432/billing"
    return database_url_renamed(base, suffix=f"_{name}")


@pytest.mark.slow
@pytest.mark.skipif(not (shutil.which("cc") or shutil.which("gcc")), reason="no C compiler")
def test_the_scale_step_reports_its_figures(tmp_path):
    # Given the benchmark's scale step at its small size, with short steps, on databases of
    # its own (the prefilled one is kept between runs, as the step keeps it)
    output = tmp_path / "scale.json"
    env = {**os.environ, "DJANGO_DEBUG": "0"}
    env.setdefault("REDIS_URL", "redis://127.0.0.1:6379/0")
    # When it runs
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--scale", "--quick", "--rates", "100",
         "--duration", "0.5", "--max-duration", "0.5", "--warmup", "0.2",
         "--database-url", _database_url("bench_empty"),
         "--scale-database-url", _database_url("bench_scale_quick"),
         "--output", str(output)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = json.loads(output.read_text())

    # Then it says how the prefilled database was made and how big it is
    assert results["prefill"]["scale"]["usage"] == 100_000
    assert results["database_size"]["bytes"] > 0
    # every compared figure was measured on both databases, with a verdict
    assert len(results["comparison"]) == 9
    for row in results["comparison"]:
        assert row["empty"] and row["prefilled"] and row["ratio"], row
        assert row["met"] in (True, False)
    # the dashboard served the heavy account's overview and a year's CSV, streamed, with
    # no sequential scan of a table that grows with usage
    dashboard = results["dashboard"]
    assert dashboard["account_usage_records"] == 20_000
    assert dashboard["overview"]["status"] == 200
    assert dashboard["overview"]["growing_table_scans"] == []
    csv_by_day = dashboard["csv_year_by_day"]
    assert (csv_by_day["status"], csv_by_day["streamed"]) == (200, True)
    assert csv_by_day["csv_lines"] > 300  # a line a day, and the header
    assert csv_by_day["growing_table_scans"] == []
    # and ledger_check passed in full, then from its checkpoint after the steps' postings
    assert results["ledger_check_full"]["exit_code"] == 0
    assert "full (asked for a full check)" in results["ledger_check_full"]["output_tail"]
    incremental = results["ledger_check_incremental"]
    assert incremental["exit_code"] == 0, incremental["output_tail"]
    assert "incremental (from the checkpoint" in incremental["output_tail"]
    assert incremental["check_seconds"] is not None
    assert "Scale: prefilled database against the empty one" in done.stdout
    # and each service step says what PostgreSQL read and wrote during it, and how its
    # run-path statements went: items each, and the time each took
    for database in ("empty", "prefilled"):
        pairs = results[database]["pairs"]["max"]
        assert pairs["database_io"]["pages_hit"] > 0
        assert set(pairs["database_io"]) >= {"pages_read", "written_by_backends",
                                             "written_by_checkpointer"}
        for call in ("authorize", "settle"):
            batch = pairs["batches"][call]
            assert batch["items"] >= batch["statements"] > 0
            assert batch["statement_ms"] > 0
    assert "PostgreSQL buffer traffic per step" in done.stdout


def test_profile_attributes_a_builtin_to_its_callers_categories():
    # given a profile: pydantic and psycopg code, and a builtin both of them call
    pydantic = ("/venv/site-packages/pydantic/main.py", 1, "model_validate_json")
    psycopg = ("/venv/site-packages/psycopg/cursor.py", 1, "execute")
    builtin = ("~", 0, "<built-in method builtins.getattr>")
    stats = SimpleNamespace(stats={
        pydantic: (1, 1, 1.0, 4.0, {}),
        psycopg: (1, 1, 3.0, 3.5, {}),
        builtin: (4, 4, 2.0, 2.0, {pydantic: (3, 3, 1.5, 1.5), psycopg: (1, 1, 0.5, 0.5)}),
    })
    # when its self time is attributed to categories
    seconds, calls, _ = profiler.attribute(stats)
    # then the builtin's time is split in proportion to each caller's share of it
    json_in = next(name for name in seconds if name.startswith("JSON in"))
    sql = next(name for name in seconds if name.startswith("SQL client"))
    assert seconds == {json_in: 2.5, sql: 3.5}
    assert calls == {json_in: 4.0, sql: 2.0}


PERF_SCRIPT = """\
postgres 15467  4201.969965:     500000 cpu-clock:pppH:
\t          5b5348 [unknown] (/usr/lib/postgresql/15/bin/postgres)
\t          2b6d3e stringToNode+0x1e (/usr/lib/postgresql/15/bin/postgres)
\t          302a37 ExecConstraints+0xc7 (/usr/lib/postgresql/15/bin/postgres)
\t          303d1a standard_ExecutorRun+0x15a (/usr/lib/postgresql/15/bin/postgres)
\t          480262 PortalRun+0x192 (/usr/lib/postgresql/15/bin/postgres)

postgres 15467  4201.970461:     500000 cpu-clock:pppH:
\t          318aaa ExecInitAgg+0xc5a (/usr/lib/postgresql/15/bin/postgres)
\t          304597 standard_ExecutorStart+0x367 (/usr/lib/postgresql/15/bin/postgres)
\t          340f65 SPI_execute_plan_extended+0x65 (/usr/lib/postgresql/15/bin/postgres)
\t          303d1a standard_ExecutorRun+0x15a (/usr/lib/postgresql/15/bin/postgres)

postgres 15467  4201.970961:     500000 cpu-clock:pppH:
\t          1a2b3c issue_xlog_fsync+0x2c (/usr/lib/postgresql/15/bin/postgres)
\t          1a2b00 XLogFlush+0x10 (/usr/lib/postgresql/15/bin/postgres)
\t          1a0000 CommitTransactionCommand+0x5 (/usr/lib/postgresql/15/bin/postgres)

postgres 15467  4201.971461:     500000 cpu-clock:pppH:
\t          2724a _int_malloc+0x7a (/usr/lib/x86_64-linux-gnu/libc.so.6)
"""


def test_database_samples_are_counted_for_their_innermost_phase():
    # given perf samples: a CHECK constraint inside a statement's execution, a nested
    # statement's plan set-up inside the function's execution, a commit's WAL flush, and
    # a sample in no phase
    stacks = pg_phases.stacks_parse(PERF_SCRIPT)
    assert stacks[0][:2] == ["[unknown]", "stringToNode"]
    # when each is given its phase
    shares = pg_phases.phase_shares(stacks)
    # then the more specific phase wins over the one around it, and each counts once
    assert shares == {"CHECK constraints (parsed and prepared per statement)": 0.25,
                      "plan set-up (executor start)": 0.25,
                      "commit: WAL flush (fdatasync)": 0.25, pg_phases.OTHER: 0.25}


def test_the_profile_says_why_the_database_phases_were_not_measured(monkeypatch, capsys):
    # given a machine without perf
    monkeypatch.setattr(pg_phases.shutil, "which", lambda name: None)
    # when the backend is to be sampled
    with pg_phases.BackendSampler(os.getpid()) as sampler:
        pass
    # then nothing is sampled, and the profile prints the reason instead of the table
    assert sampler.shares == {} and "perf not found" in sampler.error
    profiler.print_database_phases({"backend_cpu_us": 1000.0, "database_phases": {
        "shares": sampler.shares, "samples": 0, "error": sampler.error}})
    assert "Database CPU by phase: not measured (perf not found" in capsys.readouterr().out


def test_the_profile_prints_each_phase_in_microseconds_a_pair(capsys):
    # given a quarter of the backend's samples in its WAL flush
    inproc = {"backend_cpu_us": 1200.0, "database_phases": {
        "shares": {"commit: WAL flush (fdatasync)": 0.25, pg_phases.OTHER: 0.75},
        "samples": 400, "error": None}}
    # when the table is printed
    profiler.print_database_phases(inproc)
    # then the flush is a quarter of the backend's CPU per pair
    out = capsys.readouterr().out
    assert "| commit: WAL flush (fdatasync) | 25.0% | 300 |" in out
    assert "400 perf samples" in out


def _report_with_phases(phases: dict) -> dict:
    return {"config": {"server": "granian:2x8", "accounts": 1}, "started_at": "2026-12-01",
            "database_phases_at_max": {"database_phases": phases}}


def test_the_report_prints_the_database_phases_at_the_pairs_maximum(capsys):
    # given a run whose extra pairs-maximum step sampled three PostgreSQL processes
    phases = {"shares": {"plan set-up (executor start)": 0.2, pg_phases.OTHER: 0.8},
              "samples": 3907, "processes": 3, "error": None}
    # when the report is printed
    report.print_report(_report_with_phases(phases))
    # then each phase's share is there, with how many samples of how many processes
    out = capsys.readouterr().out
    assert "3907 perf samples of 3 PostgreSQL processes" in out
    assert "| plan set-up (executor start) | 20.0% |" in out


def test_the_report_says_why_the_database_phases_were_not_measured(capsys):
    # given a run on a machine where perf could not sample
    phases = {"shares": {}, "samples": 0, "error": "perf not found (Debian package linux-perf)"}
    # when the report is printed
    report.print_report(_report_with_phases(phases))
    # then it says so instead of printing an empty table
    out = capsys.readouterr().out
    assert ("Database CPU by phase at the pairs maximum: not measured (perf not found"
            in out)
    assert "| database, by phase |" not in out
