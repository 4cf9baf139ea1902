"""python -m bench: the run-path benchmark in one run (see bench/README.md).

Order: create and migrate the benchmark database; build the load generator; measure the
psycopg round trip (before the server exists, so nothing competes with it); start the server
(production's, deploy/serve.py, unless --server says otherwise);
provision a hot account; the empty view at each offered rate and at its maximum; then, if
this build has the run path, pairs, authorize alone and settle alone; check that no hold was
left open and that the books balance; print and write the results."""

import argparse
import contextlib
import json
import os
import platform
import re
import secrets
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import redis
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from bench import loadgen, pg_baseline, pg_phases, profiler, provision, report, scale, stats
from bench.server import ROOT, CpuMeter, Server, ServerConfig, http_get_status

DEFAULT_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/billing_bench"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/3"
# Production's server as deploy/serve.py sizes it on the 2-core machine: one process per
# core, 8 threads each (bench/README.md, "The production server"). The comparison sets it
# beside the gunicorn set-up production had before, and other sizes.
DEFAULT_SERVER = "granian:2x8"
COMPARE_SERVERS = ("granian:2x8", "gthread:3x4", "granian:2x4", "granian:3x8",
                   "granian:2x16")
RESULTS_DIR = ROOT / "bench" / "results"
NOISE_CORES = 0.3  # CPU used by processes outside the benchmark above which a step is noisy


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Benchmark the run path (authorize, settle) against its baseline.")
    parser.add_argument("--keep-database", action="store_true",
                        help="reuse the benchmark database as earlier runs left it (default: "
                        "drop and recreate it, so that runs compare like with like)")
    parser.add_argument("--database-url",
                        default=os.environ.get("DATABASE_URL") or DEFAULT_DATABASE_URL,
                        help="the benchmark's own PostgreSQL database (created if missing)")
    parser.add_argument("--redis-url", default=os.environ.get("REDIS_URL") or DEFAULT_REDIS_URL)
    parser.add_argument("--server", type=ServerConfig.parse, default=DEFAULT_SERVER,
                        help="the server: production's granian:NxT (processes x threads), or "
                        f"gunicorn's sync:N or gthread:NxT (default {DEFAULT_SERVER})")
    parser.add_argument("--rates", default="500,1000,1500",
                        help="offered pairs/s, comma-separated (default 500,1000,1500: the "
                             "targets' rates and the stretch)")
    parser.add_argument("--duration", type=float,
                        help="measured seconds of each fixed-rate step (default 10)")
    parser.add_argument("--max-duration", type=float,
                        help="measured seconds of each max-throughput step (default 5)")
    parser.add_argument("--warmup", type=float,
                        help="unmeasured seconds before each step (default 1)")
    parser.add_argument("--concurrency", type=int, default=16,
                        help="requests in flight in the max-throughput steps (default 16)")
    parser.add_argument("--segment", type=int, default=300,
                        help="holds per segment of the authorize-alone and settle-alone "
                             "steps; below the tier's 400 slots (default 300)")
    parser.add_argument("--accounts", type=int, default=1,
                        help="spread the traffic over this many accounts (default 1: one hot "
                             "account takes it all)")
    parser.add_argument("--quick", action="store_true",
                        help="2-second steps: checks that everything runs; not a measurement")
    parser.add_argument("--baseline-only", action="store_true",
                        help="only the psycopg round trip and the empty view")
    parser.add_argument("--compare-servers", nargs="?", const=",".join(COMPARE_SERVERS),
                        metavar="CONFIGS",
                        help="instead of the benchmark, compare server set-ups "
                             f"(default: {','.join(COMPARE_SERVERS)})")
    parser.add_argument("--rounds", type=int, default=2,
                        help="with --compare-servers: rounds of all set-ups (default 2)")
    parser.add_argument("--scale", action="store_true",
                        help="the scale step instead of the benchmark: the service steps on the "
                             "empty database and on a prefilled one (100,000 accounts, 10 million "
                             "usage records; --quick: 1,000 and 100,000), the dashboard and "
                             "ledger_check on the prefilled one (bench/README.md, Scale)")
    parser.add_argument("--scale-database-url",
                        help="with --scale: the prefilled database, kept between runs (default: "
                             "the benchmark database's name + _scale, or _scale_quick)")
    parser.add_argument("--profile", action="store_true",
                        help="instead of the benchmark, where the time of one authorize + "
                        "settle pair goes, server and database side (bench/profiler.py)")
    parser.add_argument("--profile-pairs", type=int, default=2000,
                        help="with --profile: pairs per measurement (default 2000)")
    parser.add_argument("--profile-dump", metavar="FILE",
                        help="with --profile: also write cProfile's stats there (pstats)")
    parser.add_argument("--output", type=Path, help="results file (default "
                        "bench/results/<timestamp>.json)")
    args = parser.parse_args(argv)
    args.rates = sorted({int(r) for r in args.rates.split(",") if r.strip()})
    # --quick shortens the steps that were not given a length of their own.
    for name, default, quick in (("duration", 10.0, 2.0), ("max_duration", 5.0, 2.0),
                                 ("warmup", 1.0, 0.5)):
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else default)
    return args


@dataclass
class Context:
    args: argparse.Namespace
    binary: Path
    tag: str
    token: str
    server: Server | None = None
    monitor: psycopg.Connection | None = None
    accounts: list[provision.BenchAccount] = field(default_factory=list)
    step_no: int = 0
    redis_pid: int | None = None
    key_spend_limit_usd: str | None = None  # the steps' keys carry this limit

    @property
    def api_keys(self) -> tuple[str, ...]:
        return tuple(a.api_key for a in self.accounts)

    def database_pids(self) -> list[int]:
        """The backends serving this database, and PostgreSQL's own background processes
        (WAL writer, checkpointer, ...), which have no database."""
        rows = self.monitor.execute(
            "SELECT pid FROM pg_stat_activity WHERE pid <> pg_backend_pid()"
            " AND (datname = current_database() OR datname IS NULL)").fetchall()
        return [pid for (pid,) in rows]

    def oldest_other_transaction_s(self) -> float:
        """Age of the oldest transaction holding back PostgreSQL's cleanup, on any database
        of the server: while one is open, every update of a hot row leaves a dead version
        that cannot be pruned, and each next update of that row gets slower."""
        (age,) = self.monitor.execute(
            "SELECT coalesce(max(extract(epoch FROM now() - xact_start)), 0)"
            " FROM pg_stat_activity WHERE pid <> pg_backend_pid()"
            " AND (backend_xid IS NOT NULL OR backend_xmin IS NOT NULL)").fetchone()
        return round(float(age), 1)

    def redis_pids(self) -> list[int]:
        if self.redis_pid is None:
            try:
                self.redis_pid = int(redis.Redis.from_url(self.args.redis_url)
                                     .info("server")["process_id"])
            except (redis.RedisError, KeyError, ValueError):
                self.redis_pid = 0
        return [self.redis_pid] if self.redis_pid else []

    def cpu_meter(self) -> CpuMeter:
        return CpuMeter({"server": self.server.pids, "database": self.database_pids,
                         "redis": self.redis_pids})


# --- set-up -----------------------------------------------------------------------------------


def database_ensure(database_url: str, *, fresh: bool) -> None:
    """Create the benchmark's database; with `fresh`, drop it first. Runs then compare
    like with like: tables and indexes grown by earlier runs (and the autovacuum they
    set off) change the figures."""
    params = conninfo_to_dict(database_url)
    name = params.get("dbname")
    if not name:
        raise SystemExit("DATABASE_URL names no database")
    maintenance = make_conninfo(database_url, dbname="postgres")
    with psycopg.connect(maintenance, autocommit=True) as conn:
        if fresh:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                sql.Identifier(name)))
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        if not exists:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


def service_env(args) -> dict:
    return dict(os.environ, DATABASE_URL=args.database_url, REDIS_URL=args.redis_url,
                DJANGO_DEBUG="0")


def migrate(args) -> None:
    migrate_database(args.database_url, args)


def migrate_database(database_url: str, args) -> None:
    env = dict(service_env(args), DATABASE_URL=database_url)
    subprocess.run([sys.executable, "manage.py", "migrate", "--noinput", "-v0"], cwd=ROOT,
                   env=env, check=True)


def server_start(ctx: Context, config: ServerConfig) -> Server:
    # Beside the results: the service's own warnings and tracebacks, for a step that failed.
    log_path = RESULTS_DIR / f"{ctx.tag}-server.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    server = Server(config, database_url=ctx.args.database_url, redis_url=ctx.args.redis_url,
                    token=ctx.token, log_path=log_path)
    server.start()
    ctx.server = server
    return server


def accounts_provision(ctx: Context) -> str | None:
    """Creates the model and the accounts; returns why the run path cannot be measured,
    or None."""
    client = provision.InternalClient(ctx.server.port, ctx.token)
    provision.model_ensure(client)
    accounts_fresh(ctx)
    return provision.run_path_probe(client, ctx.accounts[0], tag=ctx.tag)


def accounts_fresh(ctx: Context) -> None:
    """New accounts for the next step: a request the generator gave up on may still
    have reserved a slot, and must not take it from the next step."""
    client = provision.InternalClient(ctx.server.port, ctx.token)
    ctx.accounts = [provision.account_provision(client, tag=f"{ctx.tag}-s{ctx.step_no}-{i}",
                                                spend_limit_usd=ctx.key_spend_limit_usd)
                    for i in range(ctx.args.accounts)]


def accounts_left_open(ctx: Context) -> list[dict]:
    """What the step's accounts still hold: after a clean step, no slot and no money."""
    client = provision.InternalClient(ctx.server.port, ctx.token)
    left = []
    for account in ctx.accounts:
        _, body = client.call("GET", f"/internal/v1/accounts/{account.account_id}")
        left.append({"account_id": account.account_id,
                     "slots_in_use": (body.get("concurrency") or {}).get("in_use"),
                     "held_usd": body.get("held_usd")})
    return left


# --- steps ------------------------------------------------------------------------------------


def step(ctx: Context, label: str, *, scenario: str, rate: float = 0, duration: float,
         path: str = "/healthz", authorized: bool = False) -> dict:
    """One step; a step that fails is recorded as {"error": ...} and the run goes on."""
    print(f"  {label:<44}", end="", flush=True)
    ctx.step_no += 1
    try:
        summary = _step(ctx, scenario=scenario, rate=rate, duration=duration, path=path,
                        authorized=authorized)
    except (loadgen.LoadgenError, provision.ProvisionError, OSError) as exc:
        print(f"failed: {exc}", flush=True)
        summary = {"error": str(exc)}
    drained = server_idle_wait(ctx)
    if drained is None:
        summary["server_busy_after"] = "still busy 120 s after the step"
    elif drained > 1:
        summary["server_busy_after_s"] = round(drained, 1)
    return summary


def _step(ctx: Context, *, scenario: str, rate: float, duration: float, path: str,
          authorized: bool) -> dict:
    if scenario != "get":
        accounts_fresh(ctx)
    batches_before = batch_counts(ctx) if scenario != "get" else {}
    io_before = database_io(ctx)
    meter = ctx.cpu_meter()
    meter.start()
    run = loadgen.run(
        ctx.binary, port=ctx.server.port, scenario=scenario, rate=rate,
        concurrency=ctx.args.concurrency, duration=duration, warmup=ctx.args.warmup,
        path=path, token=ctx.token if authorized or scenario != "get" else "",
        api_keys=ctx.api_keys, model=provision.BENCH_MODEL,
        request_prefix=f"{ctx.tag}-{ctx.step_no}", segment=ctx.args.segment)
    cpu = meter.stop(generator_cpu_seconds=run.cpu_seconds,
                     requests=run.summary["requests_sent"])
    summary = stats.step_summary(run.records, scenario=scenario,
                                 windows=run.summary["measured_windows"],
                                 abandoned=run.summary["abandoned"])
    summary["offered"] = (rate if rate > 0
                          else f"max: closed loop, {ctx.args.concurrency} in flight")
    summary["cpu"] = cpu
    summary["database_io"] = database_io_between(io_before, database_io(ctx))
    summary["generator_cost"] = run.cost()
    main = summary["pairs" if scenario == "pair" else
                   "requests" if scenario == "get" else scenario]
    latency = main["latency"]
    if main["requests"]:
        print(f"p50 {report._ms(latency['p50_ms'])} ms  p99 {report._ms(latency['p99_ms'])} ms"
              f"  {main['achieved_rate'] or 0:.0f}/s  errors: {report._errors(main['errors'])}",
              flush=True)
    else:
        print("no measured request was answered; all requests: "
              f"{report._errors(summary['statuses_all'])}", flush=True)
    time.sleep(0.5 if ctx.args.quick else 1.0)  # let the database's background work settle
    if scenario != "get":
        summary["left_open"] = accounts_left_open(ctx)
        # Warm-up and unmeasured settles included.
        summary["batches"] = batches_between(batches_before, batch_counts(ctx))
    return summary


def database_io(ctx: Context) -> dict:
    """PostgreSQL's buffer traffic so far: pages read into shared buffers for this
    database, and pages written out by whom (the whole server: a backend that has to
    write a dirty page out to make room waits for that write; the checkpointer and the
    background writer do it off the request's path)."""
    row = ctx.monitor.execute(
        "SELECT d.blks_read, d.blks_hit, b.buffers_backend, b.buffers_backend_fsync,"
        " b.buffers_checkpoint, b.buffers_clean, b.checkpoints_timed + b.checkpoints_req"
        " FROM pg_stat_database d, pg_stat_bgwriter b"
        " WHERE d.datname = current_database()").fetchone()
    names = ("pages_read", "pages_hit", "written_by_backends", "backend_fsyncs",
             "written_by_checkpointer", "written_by_bgwriter", "checkpoints")
    return dict(zip(names, row, strict=True))


def database_io_between(before: dict, after: dict) -> dict:
    return {name: after[name] - before[name] for name in after}


# Group commit's metric (metering/group_commit.py): statements run and items they carried.
_BATCH_METRIC = re.compile(
    r'^billing_run_path_(batch_size|statement_seconds)_(sum|count)\{call="(\w+)"\} (\S+)$',
    re.MULTILINE)


# Where each sample goes in batch_counts' list (statement_seconds_count counts the same
# statements as batch_size_count).
_BATCH_FIELDS = {("batch_size", "count"): 0, ("batch_size", "sum"): 1,
                 ("statement_seconds", "sum"): 2}


def batch_counts(ctx: Context) -> dict:
    """{call: [statements, items, statement seconds]} so far, over all the server's
    processes."""
    try:
        text = provision.InternalClient(ctx.server.port, ctx.token).text("/metrics")
    except OSError:
        return {}
    counts: dict = {}
    for metric, kind, call, value in _BATCH_METRIC.findall(text):
        index = _BATCH_FIELDS.get((metric, kind))
        if index is not None:
            counts.setdefault(call, [0.0, 0.0, 0.0])[index] = float(value)
    return counts


def batches_between(before: dict, after: dict) -> dict:
    """The run-path statements of a step, by call: how many items each carried, and how
    long its request thread waited for it (database, lock, commit, and the wait to run
    again: metering/group_commit.py)."""
    batches = {}
    for call, (statements, items, seconds) in after.items():
        statements_before, items_before, seconds_before = before.get(call, (0.0, 0.0, 0.0))
        if statements > statements_before:
            count, carried = statements - statements_before, items - items_before
            batches[call] = {"statements": int(count), "items": int(carried),
                             "items_per_statement": round(carried / count, 2),
                             "statement_ms": round((seconds - seconds_before) / count * 1000,
                                                   2)}
    return batches


def server_idle_wait(ctx: Context, limit: float = 120.0) -> float | None:
    """Seconds until the server answers the empty view promptly again (an overloaded step
    leaves requests queued in it), or None if it never did within `limit`."""
    started = time.monotonic()
    while time.monotonic() - started < limit:
        t0 = time.monotonic()
        status = http_get_status(ctx.server.port, "/healthz", timeout=5.0)
        if status == 200 and time.monotonic() - t0 < 0.05:
            return time.monotonic() - started
        time.sleep(0.2)
    return None


def empty_view_steps(ctx: Context) -> dict:
    args = ctx.args
    rates = sorted(set(args.rates) | {2 * r for r in args.rates})
    steps = {str(rate): step(ctx, f"empty view at {rate}/s", scenario="get", rate=rate,
                             duration=args.duration) for rate in rates}
    steps["max"] = step(ctx, "empty view max", scenario="get", duration=args.max_duration)
    return steps


def database_phases_at_max(ctx: Context) -> dict:
    """One more pairs maximum with every process of the database sampled by perf
    (bench/pg_phases.py): where PostgreSQL's CPU goes once batches form. A step of its
    own, so that perf's cost is in none of the figures the targets are read from."""
    reason = pg_phases.unavailable()
    if reason:
        print(f"  database CPU by phase at the pairs maximum: not measured ({reason})",
              flush=True)
        return {"database_phases": {"shares": {}, "samples": 0, "error": reason}}
    with pg_phases.BackendSampler(ctx.database_pids()) as sampler:
        result = step(ctx, "pairs max, the database sampled", scenario="pair",
                      duration=ctx.args.max_duration)
    result["database_phases"] = sampler.as_result()
    return result


def service_steps(ctx: Context) -> dict:
    args = ctx.args
    service: dict = {}
    for scenario, unit in (("pair", " pairs/s"), ("authorize", "/s"), ("settle", "/s")):
        key = "pairs" if scenario == "pair" else scenario
        name = {"pair": "pairs", "authorize": "authorize alone", "settle": "settle alone"}
        steps = {str(rate): step(ctx, f"{name[scenario]} at {rate}{unit}",
                                 scenario=scenario, rate=rate, duration=args.duration)
                 for rate in args.rates}
        steps["max"] = step(ctx, f"{name[scenario]} max", scenario=scenario,
                            duration=args.max_duration)
        service[key] = steps
    # The same pairs with a key that has a spend limit: its authorize checks and counts
    # the key's spend in the same statement (metering/sql.py, AUTHORIZE_LIMITED_PG).
    ctx.key_spend_limit_usd = provision.KEY_SPEND_LIMIT_USD
    try:
        steps = {str(rate): step(ctx, f"pairs, key with a limit, at {rate} pairs/s",
                                 scenario="pair", rate=rate, duration=args.duration)
                 for rate in args.rates[:1]}
        steps["max"] = step(ctx, "pairs, key with a limit, max", scenario="pair",
                            duration=args.max_duration)
        service["pairs_key_limit"] = steps
    finally:
        ctx.key_spend_limit_usd = None
    return service


def post_checks(ctx: Context) -> dict:
    checks: dict = {}
    ledger = subprocess.run([sys.executable, "manage.py", "ledger_check"], cwd=ROOT,
                            env=service_env(ctx.args), capture_output=True, text=True)
    checks["ledger_check"] = {"exit_code": ledger.returncode,
                              "output_tail": (ledger.stdout + ledger.stderr).strip()[-2000:]}
    return checks


def generator_cost_summary(results: dict) -> dict | None:
    """The generator's cost at the highest fixed request rate of the run."""
    candidates = []
    for group, steps, per_unit in (("empty view", results["baseline"].get("empty_view", {}), 1),
                                   ("pairs", results.get("service", {}).get("pairs", {}), 2)):
        for key, step_result in steps.items():
            if key != "max" and "generator_cost" in step_result:
                candidates.append((int(key) * per_unit, group, step_result))
    if not candidates:
        return None
    requests_per_s, group, chosen = max(candidates, key=lambda c: c[0])
    costs = [s["generator_cost"]["us_per_request"] for _, _, s in candidates]
    return {"highest_rate": requests_per_s, "step": f"{group} at {requests_per_s} requests/s",
            "core_share_at_highest_rate": chosen["cpu"]["generator_cores"],
            "us_per_request": round(sorted(costs)[len(costs) // 2], 1)}


def noise_notes(results: dict) -> list[str]:
    notes = []

    def walk(prefix, tree):
        for key, value in tree.items():
            if isinstance(value, dict) and "cpu" in value:
                other = value["cpu"]["other_cores"]
                if other > NOISE_CORES:
                    notes.append(f"{prefix} {key}: {other:.2f} cores used outside the "
                                 "benchmark; treat it as noisy and run again")
            elif isinstance(value, dict):
                walk(f"{prefix} {key}".strip(), value)

    walk("", {"baseline": results["baseline"], "service": results.get("service", {})})
    return notes


def leak_notes(results: dict) -> list[str]:
    notes = []
    for kind, steps in (results.get("service") or {}).items():
        if not isinstance(steps, dict):
            continue
        for key, step_result in steps.items():
            for account in step_result.get("left_open", []):
                if account["slots_in_use"]:
                    notes.append(f"service {kind} {key}: {account['slots_in_use']} slots still "
                                 f"in use a second after the step (account "
                                 f"{account['account_id']}): requests given up on, or leaked")
    return notes


def machine_info() -> dict:
    try:
        cpu_model = next(line.split(":", 1)[1].strip()
                         for line in Path("/proc/cpuinfo").read_text().splitlines()
                         if line.startswith("model name"))
    except (OSError, StopIteration):
        cpu_model = platform.processor()
    return {"cores": os.cpu_count(), "cpu": cpu_model, "kernel": platform.release(),
            "python": platform.python_version(), "load_average": os.getloadavg()}


# --- the two modes ----------------------------------------------------------------------------


def benchmark(ctx: Context) -> dict:
    args = ctx.args
    results: dict = {
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "config": {"server": args.server.name, "rates_pairs_per_s": args.rates,
                   "duration_s": args.duration, "max_duration_s": args.max_duration,
                   "warmup_s": args.warmup, "max_concurrency": args.concurrency,
                   "segment": args.segment, "accounts": args.accounts,
                   "database_url": args.database_url, "redis_url": args.redis_url,
                   "quick": args.quick},
        "baseline": {},
    }
    oldest = [ctx.oldest_other_transaction_s()]
    print("Baseline (a): psycopg conditional UPDATE round trip ...", flush=True)
    psycopg_result = pg_baseline.round_trip(args.database_url, seconds=min(args.duration, 3.0))
    results["baseline"]["psycopg"] = psycopg_result
    print(f"Starting the server ({args.server.name}) ...", flush=True)
    server = server_start(ctx, args.server)
    try:
        skipped = accounts_provision(ctx)
        results["config"]["probe_account_ids"] = [a.account_id for a in ctx.accounts]
        tier_slots = ctx.accounts[0].tier_concurrency
        results["config"]["tier_concurrency"] = tier_slots
        if tier_slots and args.segment > tier_slots * 3 // 4:
            # A segment's holds are all open at once: leave the tier some slots spare.
            args.segment = results["config"]["segment"] = max(1, tier_slots * 3 // 4)
        print("Baseline (b): empty view", flush=True)
        results["baseline"]["empty_view"] = empty_view_steps(ctx)
        if args.baseline_only:
            results["service"] = {"skipped": "--baseline-only"}
        elif skipped:
            results["service"] = {"skipped": skipped}
            print(f"Service: skipped: {skipped}", flush=True)
        else:
            print("Service: the run path", flush=True)
            results["service"] = service_steps(ctx)
            results["database_phases_at_max"] = database_phases_at_max(ctx)
        results["checks"] = post_checks(ctx)
    finally:
        server.stop()
    oldest.append(ctx.oldest_other_transaction_s())
    results["postgres_oldest_other_transaction_s"] = oldest
    results["finished_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    results["generator_cost"] = generator_cost_summary(results)
    results["ratios"] = report.ratios(results, args.rates)
    results["targets"] = report.targets(results, hot_account=args.accounts == 1)
    results["notes"] = noise_notes(results) + leak_notes(results)
    if max(oldest) > 5:
        results["notes"].append(
            f"a transaction open for {max(oldest):.0f} s elsewhere on this PostgreSQL held back "
            "the cleanup of dead row versions: hot-row updates slowed down as the run went on")
    if results["checks"]["ledger_check"]["exit_code"] != 0:
        results["notes"].append("ledger_check found differences after the run: see "
                                "checks.ledger_check in the results file")
    return results


SCALE_STEPS = (("pair", "pairs", "pairs"), ("authorize", "authorize", "authorize alone"),
               ("settle", "settle", "settle alone"))


def scale_service_steps(contexts: dict[str, Context]) -> dict:
    """Pairs, authorize alone and settle alone at the first offered rate and at maximum,
    each step on every database in turn (so that someone else's burst of load is shared
    out, not landed on one database's steps)."""
    service: dict = {name: {} for name in contexts}
    for scenario, key, label in SCALE_STEPS:
        for step_key in ("rate", "max"):
            for name, ctx in contexts.items():
                args = ctx.args
                rate = args.rates[0]
                if step_key == "rate":
                    result = step(ctx, f"{label} at {rate}/s ({name})", scenario=scenario,
                                  rate=rate, duration=args.duration)
                else:
                    result = step(ctx, f"{label} max ({name})", scenario=scenario,
                                  duration=args.max_duration)
                service[name].setdefault(key, {})[
                    str(rate) if step_key == "rate" else "max"] = result
    return service


def scale_databases_steps(args, databases: dict[str, str], *, binary: Path, tag: str) -> dict:
    """The scale step's service steps, each database under a server of its own (started
    together; the one not being measured is idle)."""
    with contextlib.ExitStack() as stack:
        contexts: dict[str, Context] = {}
        for name, database_url in databases.items():
            db_args = argparse.Namespace(**{**vars(args), "database_url": database_url})
            monitor = stack.enter_context(psycopg.connect(database_url, autocommit=True))
            ctx = Context(args=db_args, binary=binary, tag=f"{tag}-{name}",
                          token=secrets.token_urlsafe(24), monitor=monitor)
            server = server_start(ctx, args.server)
            stack.callback(server.stop)
            skipped = accounts_provision(ctx)
            if skipped:
                return {name: {"skipped": skipped} for name in databases}
            tier_slots = ctx.accounts[0].tier_concurrency
            if tier_slots and db_args.segment > tier_slots * 3 // 4:
                db_args.segment = max(1, tier_slots * 3 // 4)
            contexts[name] = ctx
        return scale_service_steps(contexts)


def scale_benchmark(args, stamp: str, binary: Path) -> dict:
    prefilled_url = scale.scale_database_url(args)
    results: dict = {"mode": "scale",
                     "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
                     "machine": machine_info(),
                     "config": {"server": args.server.name, "rate": args.rates[0],
                                "duration_s": args.duration, "max_duration_s": args.max_duration,
                                "empty_database_url": args.database_url,
                                "prefilled_database_url": prefilled_url, "quick": args.quick},
                     "notes": []}
    results["prefill"] = scale.prefill_ensure(
        args, prefilled_url, database_ensure=database_ensure,
        migrate=lambda url: migrate_database(url, args))
    results["database_size"] = scale.database_size(prefilled_url)
    prefilled_env = dict(service_env(args), DATABASE_URL=prefilled_url)
    print("ledger_check --full on the prefilled database ...", flush=True)
    results["ledger_check_full"] = scale.ledger_check_timed(prefilled_env, "--full")
    print(f"Service: each step on the empty database ({args.database_url}), then on the "
          f"prefilled one ({prefilled_url})", flush=True)
    service = scale_databases_steps(
        args, {"empty": args.database_url, "prefilled": prefilled_url}, binary=binary,
        tag=f"{stamp}-{secrets.token_hex(2)}")
    results["empty"], results["prefilled"] = service["empty"], service["prefilled"]
    print("ledger_check from its checkpoint, after the steps' postings ...", flush=True)
    results["ledger_check_incremental"] = scale.ledger_check_timed(prefilled_env)
    print("Dashboard: overview and a year's CSV export ...", flush=True)
    results["dashboard"] = scale.dashboard_measure(prefilled_env)
    results["comparison"] = scale.compare(results["empty"], results["prefilled"],
                                          args.rates[0])
    results["notes"] += noise_notes({"baseline": {}, "service": {
        "empty": results["empty"], "prefilled": results["prefilled"]}})
    for key in ("ledger_check_full", "ledger_check_incremental"):
        if results[key]["exit_code"] != 0:
            results["notes"].append(f"{key} found differences: see the results file")
    results["finished_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    return results


# (key, label, scenario, offered rate or 0 for the maximum, path)
COMPARE_STEPS = (
    ("empty_view_1000", "empty view at 1000/s", "get", 1000, "/healthz"),
    ("empty_view_max", "empty view max", "get", 0, "/healthz"),
    ("account_read_max", "account read max", "get", 0, "account"),
    ("pairs_500", "pairs at 500 pairs/s", "pair", 500, ""),
    ("pairs_max", "pairs max", "pair", 0, ""),
    ("authorize_max", "authorize alone max", "authorize", 0, ""),
)
COMPARE_TITLES = ("healthz@1000", "healthz max", "read max", "pairs@500", "pairs max",
                  "authorize max")


def compare_servers(ctx: Context, configs: list[ServerConfig]) -> dict:
    """The same short steps under each worker set-up, in rounds (the set-ups take turns, so
    that a burst of someone else's load does not land on one set-up only): the empty view,
    a database-bound read (GET an account: several queries) and, when the build has the
    run path, pairs. Best of the rounds for latency and throughput (interference only ever
    makes a number worse); CPU per request (server and PostgreSQL), which interference
    moves least, as the median."""
    args = ctx.args
    duration = min(args.duration, 5.0)
    runs: dict[str, list[dict]] = {config.name: [] for config in configs}
    run_path = False
    for round_no in range(args.rounds):
        for config in configs[round_no % len(configs):] + configs[:round_no % len(configs)]:
            print(f"server {config.name} (round {round_no + 1} of {args.rounds})", flush=True)
            server_start(ctx, config)
            try:
                if not ctx.accounts:
                    run_path = accounts_provision(ctx) is None
                account_path = f"/internal/v1/accounts/{ctx.accounts[0].account_id}"
                row = {}
                for key, label, scenario, rate, path in COMPARE_STEPS:
                    if scenario in ("pair", "authorize") and not run_path:
                        continue
                    row[key] = step(ctx, label, scenario=scenario, rate=rate,
                                    duration=duration if rate else args.max_duration,
                                    path=account_path if path == "account" else path or "/",
                                    authorized=path == "account")
                runs[config.name].append(row)
            finally:
                ctx.server.stop()
    table = {name: _compare_best(rows) for name, rows in runs.items()}
    _compare_print(table)
    return {"started_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": machine_info(), "mode": "compare-servers", "rounds": args.rounds,
            "best": table, "runs": runs}


def _compare_best(rows: list[dict]) -> dict:
    best: dict = {}
    for key, _, scenario, _, _ in COMPARE_STEPS:
        steps = [row[key] for row in rows if key in row and "error" not in row[key]]
        if not steps:
            continue
        kind = {"pair": "pairs", "get": "requests"}.get(scenario, scenario)
        answered = [s for s in steps if s[kind]["latency"]["count"]]
        cpu = sorted((s["cpu"]["server_us_per_request"] or 0)
                     + (s["cpu"]["database_us_per_request"] or 0) for s in steps)
        best[key] = {
            "p50_ms": min((s[kind]["latency"]["p50_ms"] for s in answered), default=None),
            "p99_ms": min((s[kind]["latency"]["p99_ms"] for s in answered), default=None),
            "achieved_rate": max((s[kind]["achieved_rate"] or 0 for s in steps), default=0),
            "errors": [s[kind]["errors"] for s in steps],
            "server_and_db_us_per_request": cpu[len(cpu) // 2],
            "server_cores": [s["cpu"]["server_cores"] for s in steps],
            "database_cores": [s["cpu"]["database_cores"] for s in steps],
            "other_cores": [s["cpu"]["other_cores"] for s in steps],
        }
    return best


def _compare_print(table: dict) -> None:
    print("")
    print("Best of the rounds: latency p50/p99 ms at a fixed rate; max throughput/s and its "
          "CPU (server + PostgreSQL) in us per request")
    header = f"{'server':<13}"
    for title in COMPARE_TITLES:
        header += f"{title:>17}"
    print(header)
    for name, best in table.items():
        line = f"{name:<13}"
        for key, _, _, rate, _ in COMPARE_STEPS:
            cell = best.get(key)
            if cell is None:
                line += f"{'-':>17}"
            elif rate:
                line += f"{report._ms(cell['p50_ms']) + '/' + report._ms(cell['p99_ms']):>17}"
            else:
                text = f"{cell['achieved_rate']:.0f} ({cell['server_and_db_us_per_request']:.0f}us)"
                line += f"{text:>17}"
        print(line)
    print("CPU in each round's pairs max step (cores: server / PostgreSQL / other):")
    for name, best in table.items():
        cell = best.get("pairs_max")
        if cell:
            print(f"  {name:<13} " + "   ".join(
                f"{server:.2f} / {db:.2f} / {other:.2f}" for server, db, other in
                zip(cell["server_cores"], cell["database_cores"], cell["other_cores"],
                    strict=True)))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = datetime.now(UTC)
    stamp = started.strftime("%Y%m%dT%H%M%SZ")
    output = args.output or RESULTS_DIR / (
        f"{stamp}-servers.json" if args.compare_servers
        else f"{stamp}-scale.json" if args.scale
        else f"{stamp}-profile.json" if args.profile else f"{stamp}.json")
    print(f"Database {args.database_url}, Redis {args.redis_url}", flush=True)
    database_ensure(args.database_url, fresh=not args.keep_database)
    migrate(args)
    with tempfile.TemporaryDirectory(prefix="bench-") as workdir, \
            psycopg.connect(args.database_url, autocommit=True) as monitor:
        ctx = Context(args=args, binary=loadgen.build(Path(workdir)),
                      tag=f"{stamp}-{secrets.token_hex(2)}",
                      token=secrets.token_urlsafe(24), monitor=monitor)
        if args.profile:
            results = profiler.run(
                ctx, pairs=args.profile_pairs, service_env=service_env(args),
                server_config=ServerConfig.parse("granian:1x1"), server_start=server_start,
                step=step, accounts_provision=accounts_provision, dump=args.profile_dump)
        elif args.compare_servers:
            configs = [ServerConfig.parse(c) for c in args.compare_servers.split(",")]
            results = compare_servers(ctx, configs)
        elif args.scale:
            results = scale_benchmark(args, stamp, ctx.binary)
        else:
            results = benchmark(ctx)
    output.parent.mkdir(parents=True, exist_ok=True)
    results["output_path"] = str(output)
    output.write_text(json.dumps(results, indent=2) + "\n")
    if args.compare_servers or args.profile:
        print(f"Results: {output}")
    elif args.scale:
        scale.print_scale_report(results)
        print(f"Results: {output}")
    else:
        report.print_report(results)
    return 0
