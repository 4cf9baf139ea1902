"""The benchmark's own arithmetic and schedule (no timing assertions: the benchmark is
never part of the tests; these check that what it reports is computed right)."""

import json
import os
import shutil
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from bench import loadgen, report
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
