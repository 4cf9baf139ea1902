"""Where the time of one authorize + settle pair goes: `python -m bench --profile`.

Two measurements of the same pairs on the same hot account:

1. **Under the production server** (deploy/serve.py), one worker of one thread, pairs
   sent one at a time by the load generator: the worker's CPU per pair (all of it: HTTP
   parsing, the server, the app) and
   the database backends' CPU per pair, from /proc.
2. **In-process** (a child process: the WSGI application called directly, no sockets):
   the app's CPU per pair without a profiler (its share of (1); the rest of (1) is
   HTTP and the server), then the same pairs under cProfile with a CPU clock, whose
   self-time per function is attributed to a category by the function's module (a
   builtin or a generic standard-library function counts for the category of whoever
   called it) and scaled to the unprofiled CPU per pair. On the database side, the
   backend's CPU from /proc, the WAL flush time (track_wal_io_timing, set for this
   session only) and the WAL written (pg_stat_wal deltas), and each statement's
   execution time, nested statements of metering_settle included (auto_explain, loaded
   in this session only, its plans sent to the client as notices).

pg_stat_statements would need shared_preload_libraries (a server restart); auto_explain
and track_wal_io_timing are per session (superuser), so nothing of the server changes."""

import argparse
import contextlib
import cProfile
import io
import json
import os
import pstats
import re
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

from bench import pg_phases, provision

ROOT = Path(__file__).resolve().parent.parent

# (category, patterns on "file:function"), first match wins. Files are matched on their
# path under site-packages or the project.
CATEGORIES = (
    ("JSON in (pydantic parse, input checks)",
     ("pydantic", "validate_json", "metering/apis.py:as_decimal",
      "metering/settle.py:kinds_refusal", "metering/units.py:usage_kinds_refusal")),
    ("response build (JSON out, HttpResponse)",
     ("django/http/response.py", "json/encoder.py", "json/__init__.py",
      "django/core/serializers/json.py", "metering/apis.py:authorization_output",
      "metering/apis.py:settlement_output", "metering/apis.py:iso_datetime",
      "config/money.py", "accounts/selectors.py:params_b_number", "_json", "encode_basestring",
      "http/cookies.py")),
    ("key and catalog lookups (metering/catalog.py)",
     ("metering/catalog.py", "config/caching.py", "accounts/services.py:api_key_hash",
      "hashlib", "_hashlib", "openssl_sha256")),
    ("pricing", ("metering/pricing.py", "metering/units.py", "decimal", "fractions")),
    ("thread-locals (django.db.connection proxy, urlconf: asgiref Local)",
     ("asgiref/local.py", "django/utils/connection.py", "get_running_loop")),
    ("SQL client (psycopg execute/fetch, Django db layer)",
     ("psycopg", "django/db/", "metering/sql.py", "_psycopg", "socket", "select",
      "selectors.py")),
    ("service token, metrics, logging",
     ("config/api.py:service_token", "hmac", "config/metrics.py", "prometheus_client",
      "config/logs.py", "logging/")),
    ("Django handler, URL routing, middleware, signals",
     ("django/core/handlers", "django/middleware", "django/urls", "django/dispatch",
      "django/http/request.py", "django/utils/datastructures.py", "config/wsgi.py",
      "django/http/multipartparser.py", "django/utils/functional.py",
      "django/utils/encoding.py", "django/views", "django/conf", "config/api.py",
      "django/core/signals", "django/utils/http.py", "django/utils/regex_helper.py",
      "wsgiref", "django/utils/cache.py", "django/utils/deprecation.py")),
    ("UUID, datetime, time zone conversions",
     ("uuid.py", "django/utils/timezone.py", "datetime", "zoneinfo")),
    ("run-path services (authorize/settle logic)",
     ("metering/", "accounts/", "ratelimits/", "billing/")),
    ("the profiling driver", ("bench/profiler.py",)),
)
DRIVER = "the profiling driver"
OTHER = "other (interpreter, generic stdlib)"
# Generic code: its time belongs to whoever called it.
PASS_THROUGH = ("~", "<frozen", "/contextlib.py", "/functools.py", "/typing.py", "/abc.py",
                "/enum.py", "/threading.py", "/dataclasses.py", "/copy.py", "/re/",
                "/re.py", "/_weakrefset.py", "/weakref.py", "/inspect.py", "/types.py",
                "/collections/", "/operator.py", "/string.py", "/io.py", "/codecs.py",
                "/posixpath.py", "/os.py", "/sre_")


def _label(func: tuple) -> str:
    filename, _, name = func
    for marker in ("site-packages/", "python3.11/", str(ROOT) + "/"):
        if marker in filename:
            filename = filename.split(marker, 1)[1]
            break
    return f"{filename}:{name}"


def _category_of(func: tuple) -> str | None:
    filename, _, name = func
    if filename == "~" and not name.startswith("<built-in method builtins.") and \
            not name.startswith("<method '"):
        # A builtin method of a C extension: its type names it (pydantic_core, psycopg...).
        text = name
    elif filename == "~" or any(marker in filename for marker in PASS_THROUGH):
        return None
    else:
        text = _label(func)
    for category, patterns in CATEGORIES:
        if any(pattern in text for pattern in patterns):
            return category
    return OTHER if filename != "~" else None


def attribute(stats: pstats.Stats) -> tuple[dict[str, float], dict[str, float],
                                            dict[str, list]]:
    """Self time and function calls per category, and each category's largest functions
    (calls do not depend on how busy the machine is; time does); pass-through
    functions take their callers' categories, in proportion to the time each caller spent
    calling them."""
    raw = stats.stats  # func -> (cc, nc, tt, ct, callers{caller: (cc, nc, tt, ct)})
    memo: dict[tuple, dict[str, float]] = {}

    def shares(func: tuple, depth: int = 0) -> dict[str, float]:
        if func in memo:
            return memo[func]
        category = _category_of(func)
        if category is not None:
            result = {category: 1.0}
        elif depth > 30 or func not in raw or not raw[func][4]:
            result = {OTHER: 1.0}
        else:
            memo[func] = {OTHER: 1.0}  # a recursion through this function
            callers = raw[func][4]
            total = sum(v[2] for v in callers.values()) or 1.0
            result = defaultdict(float)
            for caller, values in callers.items():
                weight = (values[2] or 0.0) / total if total else 1 / len(callers)
                for name, share in shares(caller, depth + 1).items():
                    result[name] += weight * share
            result = dict(result)
        memo[func] = result
        return result

    totals: dict[str, float] = defaultdict(float)
    calls: dict[str, float] = defaultdict(float)
    members: dict[str, list] = defaultdict(list)
    for func, (_, nc, tt, _, _) in raw.items():
        for name, share in shares(func).items():
            totals[name] += tt * share
            calls[name] += nc * share
            members[name].append((tt * share, _label(func)))
    return dict(totals), dict(calls), {name: sorted(items, reverse=True)[:8]
                                       for name, items in members.items()}


# --- the in-process worker (a child process with Django set up) ---------------------------


def _wsgi_call(application, method: str, path: str, body: bytes, token: str) -> tuple[int, bytes]:
    environ = {
        "REQUEST_METHOD": method, "PATH_INFO": path, "QUERY_STRING": "",
        "SERVER_NAME": "127.0.0.1", "SERVER_PORT": "80", "SERVER_PROTOCOL": "HTTP/1.1",
        "HTTP_HOST": "127.0.0.1", "HTTP_AUTHORIZATION": f"Bearer {token}",
        "CONTENT_TYPE": "application/json", "CONTENT_LENGTH": str(len(body)),
        "wsgi.input": io.BytesIO(body), "wsgi.url_scheme": "http", "wsgi.errors": sys.stderr,
        "wsgi.multithread": False, "wsgi.multiprocess": True, "wsgi.run_once": False,
        "wsgi.version": (1, 0),
    }
    status_line = []

    def start_response(status, headers, exc_info=None):
        status_line.append(status)

    result = application(environ, start_response)
    try:
        content = b"".join(result)
    finally:
        close = getattr(result, "close", None)
        if close:
            close()
    return int(status_line[0].split()[0]), content


def _backend_cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _wal(cursor) -> dict:
    cursor.execute("SELECT pg_stat_force_next_flush()")
    cursor.execute("SELECT wal_records, wal_fpi, wal_bytes, wal_sync, wal_sync_time,"
                   " wal_write, wal_write_time FROM pg_stat_wal")
    names = ("wal_records", "wal_fpi", "wal_bytes", "wal_sync", "wal_sync_time_ms",
             "wal_write", "wal_write_time_ms")
    return dict(zip(names, (float(v) for v in cursor.fetchone()), strict=True))


_NORMALISE = re.compile(r"\s+")


def _statement_name(text: str) -> str:
    text = _NORMALISE.sub(" ", text).strip()
    if "metering_settle(" in text and text.lstrip().upper().startswith("SELECT * FROM"):
        return "settle: SELECT * FROM metering_settle(...) (whole function)"
    if text.startswith("WITH acct AS ( UPDATE accounts_account"):
        return "authorize: reserve + INSERT hold (one CTE)"
    if text.startswith("WITH locked AS"):
        return "authorize (key with a limit): one CTE"
    if text.startswith("UPDATE") and "accounts_apikey" in text:
        return "authorize: api key last-used touch"
    return "  " + text[:110]


def worker_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--api-key", required=True)
    parser.add_argument("--token", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--pairs", type=int, default=2000)
    parser.add_argument("--explain-pairs", type=int, default=200)
    parser.add_argument("--tag", required=True)
    parser.add_argument("--dump", help="also write the profile (pstats) to this file")
    args = parser.parse_args(argv)

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    from django.db import connection

    from config.wsgi import application

    counter = iter(range(10**9))

    def pair() -> None:
        body = json.dumps({"api_key": args.api_key, "model": args.model,
                           "request_id": f"{args.tag}-{next(counter)}", "byok": False,
                           "auto_scale": False, "estimate": {"seconds": 1}}).encode()
        status, content = _wsgi_call(application, "POST", "/internal/v1/authorize", body,
                                     args.token)
        if status != 200:
            raise SystemExit(f"authorize answered {status}: {content[:300]!r}")
        hold_id = json.loads(content)["hold_id"]
        status, content = _wsgi_call(application, "POST",
                                     f"/internal/v1/holds/{hold_id}/settle",
                                     b'{"inference_seconds":1.000,"load_seconds":0}',
                                     args.token)
        if status != 200:
            raise SystemExit(f"settle answered {status}: {content[:300]!r}")

    for _ in range(300):  # warm up: caches, prepared statements, the connection
        pair()
    connection.ensure_connection()
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        (backend_pid,) = cursor.fetchone()
        cursor.execute("SET track_wal_io_timing = on")
        wal0 = _wal(cursor)
    # 1. Unprofiled: the app's CPU and the backend's CPU per pair, wall time per pair.
    cpu0, wall0, db0 = time.thread_time(), time.perf_counter(), _backend_cpu_seconds(backend_pid)
    for _ in range(args.pairs):
        pair()
    app_cpu = (time.thread_time() - cpu0) / args.pairs
    wall = (time.perf_counter() - wall0) / args.pairs
    db_cpu = (_backend_cpu_seconds(backend_pid) - db0) / args.pairs
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        if cursor.fetchone()[0] != backend_pid:
            raise SystemExit("the database connection was replaced during the measurement")
        wal1 = _wal(cursor)
    wal = {name: (wal1[name] - wal0[name]) / args.pairs for name in wal0}

    # 2. The backend's CPU by phase (bench/pg_phases.py): perf samples its stacks
    #    through the same pairs again (not during 1: perf's own work is not the backend's).
    with pg_phases.BackendSampler(backend_pid) as sampler:
        for _ in range(args.pairs):
            pair()
    database_phases = sampler.as_result()

    # 3. Profiled (CPU clock): self time per category.
    profiler = cProfile.Profile(time.thread_time)
    profiler.enable()
    for _ in range(args.pairs):
        pair()
    profiler.disable()
    if args.dump:
        profiler.dump_stats(args.dump)
    stats = pstats.Stats(profiler)
    categories, calls, members = attribute(stats)
    top = sorted(((tt, _label(func)) for func, (_, _, tt, _, _) in stats.stats.items()),
                 reverse=True)[:40]

    # 4. Each statement's execution time, nested ones included (auto_explain's notices).
    plans: list[dict] = []

    def on_notice(diagnostic) -> None:
        message = diagnostic.message_primary or ""
        start = message.find("{")
        if "duration:" in message and start >= 0:
            with contextlib.suppress(ValueError):
                plans.append(json.loads(message[start:]))

    raw = connection.connection
    raw.add_notice_handler(on_notice)
    with connection.cursor() as cursor:
        cursor.execute("LOAD 'auto_explain'")
        for setting, value in (("log_min_duration", "0"), ("log_analyze", "on"),
                               ("log_buffers", "on"), ("log_wal", "on"),
                               ("log_timing", "on"), ("log_nested_statements", "on"),
                               ("log_format", "json"), ("log_level", "notice")):
            cursor.execute(f"SET auto_explain.{setting} = '{value}'")
    for _ in range(args.explain_pairs):
        pair()
    with connection.cursor() as cursor:
        cursor.execute("SET auto_explain.log_min_duration = -1")
    raw.remove_notice_handler(on_notice)
    statements: dict[str, dict] = {}
    for plan in plans:
        name = _statement_name(plan.get("Query Text", ""))
        if name.startswith("  SET ") or name.startswith("  SELECT pg_"):
            continue
        node = plan.get("Plan", {})
        entry = statements.setdefault(name, {"calls": 0, "ms": 0.0, "wal_records": 0,
                                             "wal_bytes": 0, "shared_hit": 0,
                                             "shared_dirtied": 0, "jit": 0, "cost": 0.0})
        entry["calls"] += 1
        entry["ms"] += float(node.get("Actual Total Time", 0.0))
        entry["wal_records"] += int(node.get("WAL Records", 0))
        entry["wal_bytes"] += int(node.get("WAL Bytes", 0))
        entry["shared_hit"] += int(node.get("Shared Hit Blocks", 0))
        entry["shared_dirtied"] += int(node.get("Shared Dirtied Blocks", 0))
        # JIT compiles a plan whose estimated cost passes jit_above_cost, at every run.
        entry["jit"] += "JIT" in plan
        entry["cost"] = max(entry["cost"], float(node.get("Total Cost", 0.0)))
    per_pair = {name: {"calls_per_pair": e["calls"] / args.explain_pairs,
                       "us_per_pair": 1000 * e["ms"] / args.explain_pairs,
                       "wal_records_per_pair": e["wal_records"] / args.explain_pairs,
                       "wal_bytes_per_pair": e["wal_bytes"] / args.explain_pairs,
                       "buffers_hit_per_pair": e["shared_hit"] / args.explain_pairs,
                       "buffers_dirtied_per_pair": e["shared_dirtied"] / args.explain_pairs,
                       "jit_per_pair": e["jit"] / args.explain_pairs,
                       "planner_cost_max": e["cost"]}
                for name, e in statements.items()}
    print(json.dumps({"app_cpu_us": app_cpu * 1e6, "wall_us": wall * 1e6,
                      "backend_cpu_us": db_cpu * 1e6, "wal_per_pair": wal,
                      "categories_profiled_s": categories,
                      "profiled_cpu_us": sum(categories.values()) * 1e6 / args.pairs,
                      "calls_per_pair": {name: count / args.pairs
                                         for name, count in calls.items()},
                      "category_functions": {
                          name: [[round(tt * 1e6 / args.pairs, 1), label]
                                 for tt, label in items]
                          for name, items in members.items()},
                      "top_functions": [[round(tt * 1e6 / args.pairs, 1), name]
                                        for tt, name in top],
                      "statements": per_pair, "database_phases": database_phases}))


# --- the driver (python -m bench --profile) ---------------------------------------------------


def run(ctx, *, pairs: int, service_env: dict, server_config, server_start, step,
        accounts_provision, dump: str | None = None) -> dict:
    """Both measurements; returns the tables (also printed)."""
    print(f"Starting the server ({server_config.name}) ...", flush=True)
    server = server_start(ctx, server_config)
    try:
        skipped = accounts_provision(ctx)
        if skipped:
            raise SystemExit(f"no run path to profile: {skipped}")
        ctx.args.concurrency = 1
        duration = max(2.0, pairs / 400)
        print("Pairs one at a time under the server (one worker, one thread)", flush=True)
        http_step = step(ctx, "pairs, one in flight", scenario="pair",
                         duration=duration)
        empty_step = step(ctx, "empty view, one in flight", scenario="get",
                          duration=duration)
        account = ctx.accounts[0]
    finally:
        server.stop()
    served = http_step["pairs"]["latency"]["count"]
    server_cpu_us = http_step["cpu"]["server_cores"] * http_step["cpu"]["wall_seconds"] \
        * 1e6 / max(served, 1)
    server_db_us = http_step["cpu"]["database_cores"] * http_step["cpu"]["wall_seconds"] \
        * 1e6 / max(served, 1)
    empty_us = empty_step["cpu"]["server_us_per_request"]

    print(f"In-process: {pairs} pairs unprofiled, {pairs} with the database backend "
          f"sampled, {pairs} under cProfile, 200 explained",
          flush=True)
    child = subprocess.run(
        [sys.executable, "-m", "bench.profiler", "--worker", "--api-key", account.api_key,
         "--token", ctx.token, "--model", provision.BENCH_MODEL, "--pairs", str(pairs),
         "--tag", f"{ctx.tag}-profile", *(["--dump", dump] if dump else [])],
        cwd=ROOT, env=dict(service_env, BILLING_INTERNAL_TOKENS=ctx.token,
                           DJANGO_ALLOWED_HOSTS="127.0.0.1,localhost"),
        capture_output=True, text=True)
    if child.returncode != 0:
        raise SystemExit(f"profiling worker failed:\n{child.stderr[-3000:]}")
    inproc = json.loads(child.stdout.strip().splitlines()[-1])
    profiled = inproc["categories_profiled_s"]
    scale = inproc["app_cpu_us"] / (sum(profiled.values()) * 1e6 / pairs)
    # The driver's own work (building the bodies, reading the answers) is not the app's.
    driver_us = profiled.pop(DRIVER, 0.0) * 1e6 / pairs * scale
    app_us = inproc["app_cpu_us"] - driver_us
    server_rows = [("HTTP and the server (worker CPU under the server - in-process app CPU)",
                    max(0.0, server_cpu_us - app_us))]
    for name, seconds in sorted(profiled.items(), key=lambda item: -item[1]):
        server_rows.append((name, seconds * 1e6 / pairs * scale))
    result = {"pairs": pairs, "server_worker_cpu_us_per_pair": server_cpu_us,
              "server_empty_view_cpu_us_per_request": empty_us,
              "server_database_cpu_us_per_pair": server_db_us,
              "server_pair_latency_ms": http_step["pairs"]["latency"],
              "server_other_cores": http_step["cpu"]["other_cores"],
              "server_rows": server_rows, "inprocess": inproc}
    print_tables(result)
    return result


def print_tables(result: dict) -> None:
    inproc = result["inprocess"]
    total = sum(us for _, us in result["server_rows"])
    print("")
    print(f"Server CPU per pair: {result['server_worker_cpu_us_per_pair']:.0f} us under "
          f"the server (in-process app: {inproc['app_cpu_us']:.0f} us; empty view under "
          f"the server: {result['server_empty_view_cpu_us_per_request']} us a request; "
          f"other cores during the step: {result['server_other_cores']})")
    calls = inproc.get("calls_per_pair", {})
    print("| server side, one pair | us | share | Python calls |\n|---|---:|---:|---:|")
    for name, us in result["server_rows"]:
        count = calls.get(name)
        print(f"| {name} | {us:.0f} | {100 * us / total:.0f}% | "
              f"{'' if count is None else f'{count:.0f}'} |")
    print(f"| total | {total:.0f} | 100% | "
          f"{sum(c for n, c in calls.items() if n != DRIVER):.0f} |")
    print("")
    wal = inproc["wal_per_pair"]
    print(f"Database per pair: backend CPU {inproc['backend_cpu_us']:.0f} us in-process "
          f"({result['server_database_cpu_us_per_pair']:.0f} us under the server, all "
          f"backends and background processes); in-process wall {inproc['wall_us']:.0f} us "
          "a pair")
    print("| database side, one pair | calls | exec us | WAL records | WAL bytes | "
          "buffers hit | dirtied | planner cost | JIT |\n"
          "|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, entry in sorted(inproc["statements"].items(),
                              key=lambda item: (not item[0].startswith(("authorize",
                                                                        "settle")),
                                                -item[1]["us_per_pair"])):
        print(f"| {name.strip() if not name.startswith('  ') else '... ' + name.strip()} | "
              f"{entry['calls_per_pair']:.2f} | {entry['us_per_pair']:.0f} | "
              f"{entry['wal_records_per_pair']:.1f} | {entry['wal_bytes_per_pair']:.0f} | "
              f"{entry['buffers_hit_per_pair']:.1f} | {entry['buffers_dirtied_per_pair']:.1f} | "
              f"{entry.get('planner_cost_max', 0):.0f} | {entry.get('jit_per_pair', 0):.2f} |")
    print(f"| WAL flush at commit (this backend's fdatasync; track_wal_io_timing) | "
          f"{wal['wal_sync']:.2f} syncs (whole server) | {1000 * wal['wal_sync_time_ms']:.0f} "
          f"| {wal['wal_records']:.1f} (whole server) | {wal['wal_bytes']:.0f} | | | | |")
    print_database_phases(inproc)
    print("")
    print("Largest functions of each category (self CPU us per pair, profiled):")
    for name, items in inproc["category_functions"].items():
        print(f"  {name}: " + "; ".join(f"{label} {us}" for us, label in items[:5]))
    print("Top functions (self CPU us per pair, profiled):")
    for us, name in inproc["top_functions"][:20]:
        print(f"  {us:8.1f}  {name}")


def print_database_phases(inproc: dict) -> None:
    """The backend's CPU per pair by phase: each phase's share of perf's samples times
    the backend's CPU per pair (measured without perf)."""
    phases = inproc.get("database_phases") or {}
    print("")
    if not phases.get("shares"):
        print(f"Database CPU by phase: not measured ({phases.get('error') or 'no samples'})")
        return
    print(f"Database CPU by phase ({phases['samples']} perf samples of the backend, "
          f"scaled to its {inproc['backend_cpu_us']:.0f} us a pair):")
    for line in pg_phases.phase_table(phases["shares"], us_total=inproc["backend_cpu_us"]):
        print(line)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--worker"]:
        worker_main(sys.argv[2:])
    else:
        raise SystemExit("run it as: python -m bench --profile")
