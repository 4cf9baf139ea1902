"""The scale step (`python -m bench --scale`, `make bench-scale`): do the figures hold as the
data grows?

The same service steps run, under the same server set-up, against two databases: an empty
one (freshly created and migrated) and one prefilled with bench/scale_prefill.py's
accounts, year of settled runs and closed holds (kept between runs: the prefill is paid
once). Then, on the prefilled one: the customer dashboard's overview and a year's CSV
export for the account with the most usage (bench/scale_dashboard.py), and
`manage.py ledger_check`, in full and from its checkpoint after the steps' postings.
Prints prefilled / empty ratios, with MET when within TOLERANCE."""

import json
import re
import subprocess
import sys
import time
from urllib.parse import urlsplit, urlunsplit

import psycopg

from bench import report, scale_prefill
from bench.server import ROOT

TOLERANCE = 0.10  # prefilled within 10% of empty
BIG_ACCOUNT_EMAIL = "scale-1@bench.invalid"


def scale_database_url(args) -> str:
    """The prefilled database: --scale-database-url, else the benchmark database's name
    with `_scale` (`_scale_quick` for --quick, so that the two never replace each other)."""
    if args.scale_database_url:
        return args.scale_database_url
    return database_url_renamed(args.database_url, suffix="_scale_quick" if args.quick
                                else "_scale")


def database_url_renamed(database_url: str, *, suffix: str) -> str:
    """The same server's URL for the database named like this one's + `suffix`."""
    parts = urlsplit(database_url)
    return urlunsplit(parts._replace(path=f"{parts.path.rstrip('/')}{suffix}"))


def database_size(database_url: str) -> dict:
    with psycopg.connect(database_url, autocommit=True) as conn:
        (size,) = conn.execute("SELECT pg_database_size(current_database())").fetchone()
        tables = conn.execute(
            "SELECT c.relname, pg_total_relation_size(c.oid), c.reltuples::bigint"
            " FROM pg_class c WHERE c.relkind = 'r' AND c.relnamespace = 'public'::regnamespace"
            " ORDER BY 2 DESC LIMIT 8").fetchall()
    return {"bytes": size, "gb": round(size / 2**30, 2),
            "largest_tables": [{"table": t, "mb": round(b / 2**20), "rows_estimate": n}
                               for t, b, n in tables]}


def prefill_ensure(args, database_url: str, *, database_ensure, migrate) -> dict:
    """The prefilled database at this run's scale: reused when its marker says it holds
    it, else created afresh and filled. Migrated either way (a kept database gets the
    migrations added since)."""
    scale = scale_prefill.QUICK if args.quick else scale_prefill.FULL
    database_ensure(database_url, fresh=False)
    with psycopg.connect(database_url, autocommit=True) as conn:
        found = scale_prefill.prefilled(conn, scale)
    if found is not None:
        print(f"Prefilled database {database_url}: reused (filled {found['finished_at']} in "
              f"{found['seconds']:.0f} s)", flush=True)
        migrate(database_url)
        return {"reused": True, "prefill_seconds": found["seconds"],
                "filled_at": found["finished_at"], "scale": found["params"]}
    print(f"Prefilling {database_url}: {scale.accounts:,} accounts, {scale.usage:,} settled "
          f"runs ({scale.big_usage:,} on one account), {scale.closed_holds:,} closed holds",
          flush=True)
    database_ensure(database_url, fresh=True)
    migrate(database_url)
    seconds = scale_prefill.prefill(database_url, scale)
    migrate(database_url)
    return {"reused": False, "prefill_seconds": seconds, "scale": scale.__dict__}


def ledger_check_timed(env: dict, *extra: str) -> dict:
    started = time.monotonic()
    done = subprocess.run([sys.executable, "manage.py", "ledger_check", *extra], cwd=ROOT,
                          env=env, capture_output=True, text=True)
    wall = time.monotonic() - started
    out = (done.stdout + done.stderr).strip()
    own = re.search(r"; ([0-9.]+) s$", done.stdout.splitlines()[0] if done.stdout else "")
    return {"args": list(extra), "exit_code": done.returncode, "wall_seconds": round(wall, 2),
            "check_seconds": float(own.group(1)) if own else None,
            "output_tail": out[-1500:]}


def dashboard_measure(env: dict) -> dict:
    done = subprocess.run([sys.executable, "-m", "bench.scale_dashboard",
                           "--email", BIG_ACCOUNT_EMAIL], cwd=ROOT, env=env,
                          capture_output=True, text=True)
    if done.returncode != 0:
        return {"error": done.stderr.strip()[-2000:]}
    return json.loads(done.stdout)


# (label, scenario key in the service results, step key, kind, figure)
COMPARED = [
    ("authorize alone p50", "authorize", "rate", "authorize", "p50_ms"),
    ("authorize alone p99", "authorize", "rate", "authorize", "p99_ms"),
    ("settle alone p50", "settle", "rate", "settle", "p50_ms"),
    ("settle alone p99", "settle", "rate", "settle", "p99_ms"),
    ("pairs p50", "pairs", "rate", "pairs", "p50_ms"),
    ("pairs p99", "pairs", "rate", "pairs", "p99_ms"),
    ("authorize alone max /s", "authorize", "max", "authorize", "achieved_rate"),
    ("settle alone max /s", "settle", "max", "settle", "achieved_rate"),
    ("pairs max /s", "pairs", "max", "pairs", "achieved_rate"),
]


def compare(empty: dict, prefilled: dict, rate: int) -> list[dict]:
    """Prefilled over empty for each figure; MET when latency grew by at most TOLERANCE
    and throughput fell by at most TOLERANCE."""
    rows = []
    for label, scenario, step_key, kind, figure in COMPARED:
        key = str(rate) if step_key == "rate" else "max"
        path = (scenario, key, kind) + (("latency", figure) if figure != "achieved_rate"
                                          else (figure,))
        a, b = report._get(empty, *path), report._get(prefilled, *path)
        ratio = report._ratio(b, a)
        if ratio is None:
            met = None
        elif figure == "achieved_rate":
            met = ratio >= 1 - TOLERANCE
        else:
            met = ratio <= 1 + TOLERANCE
        rows.append({"name": f"{label}{f' at {rate}/s' if key != 'max' else ''}",
                     "empty": a, "prefilled": b, "ratio": ratio, "met": met})
    return rows


def print_scale_report(results: dict) -> None:
    prefill = results["prefill"]
    print("")
    print("Scale: prefilled database against the empty one (same server, same steps)")
    print(f"  prefill: {'reused' if prefill['reused'] else 'filled now'}, "
          f"{prefill['prefill_seconds']:.0f} s; scale {prefill['scale']}")
    size = results["database_size"]
    print(f"  size: {size['gb']} GB ("
          + ", ".join(f"{t['table']} {t['mb']} MB" for t in size["largest_tables"][:5]) + ")")
    for row in results["comparison"]:
        verdict = {True: "MET", False: "NOT MET", None: "not measured"}[row["met"]]
        print(f"  {row['name']:<32} empty {report._ms(row['empty']):>8}  prefilled "
              f"{report._ms(row['prefilled']):>8}  ratio {row['ratio']}  {verdict}")
    print("  PostgreSQL buffer traffic per step: pages this database read in; pages written "
          "out, on the whole server, by a backend making room (the request waits) or by the "
          "checkpointer:")
    for scenario in dict.fromkeys(row[1] for row in COMPARED):
        for key in (str(results["config"]["rate"]), "max"):
            cells = []
            for name in ("empty", "prefilled"):
                io = report._get(results, name, scenario, key, "database_io") or {}
                cells.append(f"{name} {io.get('pages_read', '-')} read, "
                             f"{io.get('written_by_backends', '-')} by backends, "
                             f"{io.get('written_by_checkpointer', '-')} by the checkpointer")
            step = f"{scenario} {'max' if key == 'max' else 'at ' + key + '/s'}"
            print(f"    {step:<20} " + "; ".join(cells))
    dash = results["dashboard"]
    if "error" in dash:
        print(f"  dashboard: failed: {dash['error'][-500:]}")
    else:
        print(f"  dashboard (account with {dash['account_usage_records']:,} usage records):")
        for key in ("overview", "csv_year_by_day", "csv_year_by_model"):
            m = dash[key]
            print(f"    {key:<18} {m['status']} {m['seconds']:.3f} s, {m['bytes']:,} bytes, "
                  f"{m['queries']} queries, python peak {m['python_peak_mb']} MB, process "
                  f"peak RSS {m['process_peak_rss_mb']} MB, sequential scans of growing "
                  f"tables: {', '.join(m['growing_table_scans']) or 'none'}")
    for key, label in (("ledger_check_full", "ledger_check --full"),
                       ("ledger_check_incremental", "ledger_check (from checkpoint)")):
        check = results[key]
        print(f"  {label:<32} {check['check_seconds']} s (wall {check['wall_seconds']} s), "
              f"exit {check['exit_code']}")
    for note in results.get("notes", []):
        print(f"  note: {note}")
