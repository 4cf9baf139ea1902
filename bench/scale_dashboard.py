"""The scale step's dashboard measurement, run in its own process (the serving process:
Django's request handler, in-process, with the production settings the benchmark's server
gets): the overview page and a year's CSV export of usage, for the prefilled account with
the most usage records. Prints one JSON object.

Per request: the time to the last byte, the peak of Python's allocations while serving it
(tracemalloc), the process's peak RSS after it, and the plan of every query it sent (a
sequential scan of a table that grows with usage is named: those must go by index).

    DATABASE_URL=... python -m bench.scale_dashboard --email scale-1@bench.invalid"""

import argparse
import json
import os
import resource
import sys
import time
import tracemalloc
from datetime import timedelta

import django

# Tables whose size grows with usage: a page that reads one of them whole does not scale.
GROWING_TABLES = ("metering_usagerecord", "metering_hold", "billing_ledgerentry",
                  "billing_ledgertransaction")


def _rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def _scans(queries, connection) -> list[str]:
    """The growing tables each SELECT read by a sequential scan."""
    found = []
    with connection.cursor() as cursor:
        for query in queries:
            sql = query["sql"]
            if not sql.lstrip().upper().startswith("SELECT"):
                continue
            cursor.execute("EXPLAIN " + sql)
            plan = "\n".join(row[0] for row in cursor.fetchall())
            found += [f"Seq Scan on {t}" for t in GROWING_TABLES if f"Seq Scan on {t}" in plan]
    return sorted(set(found))


def _measure(client, path: str, connection, capture) -> dict:
    tracemalloc.start()
    tracemalloc.reset_peak()
    with capture(connection) as queries:
        started = time.perf_counter()
        response = client.get(path, secure=True)
        size = 0
        rows = 0
        if response.streaming:
            for chunk in response.streaming_content:
                size += len(chunk)
                rows += chunk.count(b"\n")
        else:
            size = len(response.content)
        seconds = time.perf_counter() - started
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return {"path": path, "status": response.status_code, "seconds": round(seconds, 3),
            "bytes": size, "csv_lines": rows if response.streaming else None,
            "streamed": response.streaming, "queries": len(queries),
            "python_peak_mb": round(peak / 2**20, 2), "process_peak_rss_mb": _rss_mb(),
            "growing_table_scans": _scans(queries.captured_queries, connection)}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--email", required=True)
    args = parser.parse_args()
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    django.setup()  # the imports below need the apps loaded
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext
    from django.urls import reverse
    from django.utils import timezone

    from accounts.models import User
    from metering.models import UsageRecord

    user = User.objects.select_related("account").get(email=args.email)
    records = UsageRecord.objects.filter(account_id=user.account.id).count()
    client = Client()
    client.force_login(user)
    today = timezone.now().date()
    year = f"start={(today - timedelta(days=364)).isoformat()}&end={today.isoformat()}"
    result = {"account_usage_records": records, "rss_at_start_mb": _rss_mb()}
    # Warm once (imports, template loading), then measure.
    client.get(reverse("dashboard:overview"), secure=True)
    result["overview"] = _measure(client, reverse("dashboard:overview"), connection,
                                  CaptureQueriesContext)
    for group in ("day", "model"):
        result[f"csv_year_by_{group}"] = _measure(
            client, f"{reverse('dashboard:usage_csv')}?{year}&group={group}", connection,
            CaptureQueriesContext)
    json.dump(result, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
