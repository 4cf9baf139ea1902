"""Figures 4 and 11: the service under its production server, killed with SIGKILL under
load, and its PostgreSQL and Redis stopped and frozen under load (private servers this test starts,
never the machine's shared ones). Every call without a final answer is retried as the
gateway would (by request_id, then by hold); then no request has two holds, every hold
ended once, nothing was charged twice, and the books balance."""

import statistics
import time
from decimal import Decimal

import pytest
from django.conf import settings
from django.db import connection

from accounts.models import Account
from metering.selectors import books_discrepancies
from tests.conftest import INTERNAL_TOKEN
from tests.prove.figures import scaled
from tests.prove.harness import (
    Caller,
    Gateway,
    PrivatePostgres,
    PrivateRedis,
    books,
    ledger_check,
    production_server,
    server_kill,
)
from tests.runpath import (
    MODEL_7B,
    MODEL_CLOSED_CHEAP,
    RATE_7B,
    USD,
    balance_set,
    customer_create,
)

pytestmark = [pytest.mark.django_db(transaction=True, serialized_rollback=True),
              pytest.mark.usefixtures("catalog"), pytest.mark.slow]

OPEN_USAGE = {"inference_seconds": 7.5}  # billed 8 s
OPEN_CHARGE = 8 * RATE_7B


def test_database_url() -> str:
    s = connection.settings_dict
    return f"postgres://{s['USER'] or 'postgres'}@{s['HOST'] or '127.0.0.1'}:" \
           f"{s['PORT'] or 5432}/{s['NAME']}"


test_database_url.__test__ = False


def usd_nanos(text: str) -> int:
    return int(Decimal(text) * USD)


def assert_every_run_ended_once(gateway: Gateway, database_url: str, prefix: str) -> dict:
    """No request_id has two holds; every admitted run's hold is settled, with one usage
    record, charged what its usage costs; the charges the callers saw are the database's."""
    rows = books(database_url, prefix)["holds"]
    request_ids = [row[0] for row in rows]
    assert len(request_ids) == len(set(request_ids)), "a request_id with two holds"
    admitted = {run.request_id: run for run in gateway.runs.values()
                if run.authorize_answer == 200}
    assert set(request_ids) == set(admitted), "holds the callers never heard of, or lost"
    for request_id, hold_id, status, charged, usage_records, usage_charged in rows:
        run = admitted[request_id]
        assert (hold_id, status, usage_records) == (run.hold_id, "settled", 1), request_id
        assert charged == usage_charged == usd_nanos(run.charged_usd), request_id
    return {"holds": len(rows), "charged": sum(row[3] for row in rows)}


KILL_LOAD_SECONDS = scaled(ci=3, full=10)
KILLS = scaled(ci=1, full=3)


@pytest.mark.figure(4, tried="the production server (granian 2x4) on the test database "
                    "under 6 gateway threads of authorize+settle; SIGKILL to master and "
                    "workers mid-load, restarted; every unanswered call retried by "
                    "request_id or hold")
def test_sigkill_under_load_loses_and_doubles_nothing(tmp_path, figure):
    customers = [customer_create(purchased_usd=1_000) for _ in range(3)]
    for customer in customers:
        balance_set(account_id=customer.account_id, balance_nanos=500 * USD)
    callers = [Caller(customer.key, MODEL_7B, OPEN_USAGE) for customer in customers * 2]
    server = production_server(database_url=test_database_url(), redis_url=settings.REDIS_URL,
                               token=INTERNAL_TOKEN, log_path=tmp_path / "server.log")
    server.start()
    gateway = Gateway(port_of=lambda: server.port, token=INTERNAL_TOKEN, callers=callers,
                      prefix="kill")
    unanswered_at_kills = []
    try:
        gateway.start()
        for _ in range(KILLS):
            time.sleep(KILL_LOAD_SECONDS)
            server_kill(server)
            time.sleep(0.5)
            unanswered_at_kills.append(len(gateway.unfinished()))
            server.start()
        time.sleep(KILL_LOAD_SECONDS)
        gateway.stop()
        retried = gateway.retry_unfinished()
    finally:
        gateway.stop()
        server.stop()

    no_answer = sum(1 for o in gateway.observations if o.status is None)
    ended = assert_every_run_ended_once(gateway, test_database_url(), "kill")
    figure.add(counts=f"{KILLS} SIGKILL(s), {len(gateway.observations)} calls, {no_answer} "
                      f"got no answer, {retried} runs retried; {ended['holds']} holds, each "
                      "settled once; 0 request_ids with two holds; ledger_check clean")
    assert no_answer > 0 and retried > 0  # the kill did cut calls off
    for customer in customers:
        account = Account.objects.get(id=customer.account_id)
        assert (account.held_nanos, account.slots_in_use) == (0, 0)
    spent = sum(500 * USD - Account.objects.get(id=c.account_id).balance_nanos
                for c in customers)
    assert spent == ended["charged"] == ended["holds"] * OPEN_CHARGE
    assert books_discrepancies() == []
    checked = ledger_check(test_database_url(), settings.REDIS_URL)
    assert checked.returncode == 0, checked.stdout + checked.stderr


FAULT_SECONDS = scaled(ci=3, full=10)
# Bounds on any one call during a fault: PostgreSQL's connect timeout (3 s) and Redis's
# (0.5 s), plus room for a loaded machine.
PG_BOUND_SECONDS = 5.0
REDIS_BOUND_SECONDS = 2.0


def phase_report(gateway, name, started, ended, affected: set[int], bound: float) -> dict:
    """The calls made during a fault: every answer final or the contract's 503 JSON,
    within the bound; and when the affected callers got their first 200 after it."""
    during = [o for o in gateway.observations if started <= o.at <= ended]
    bad = [o for o in during if o.status is None or not (
        o.status in (200, 402, 429) or (o.status == 503 and o.json
                                         and o.code == "service_unavailable"))]
    assert bad == [], (name, bad[:5])
    slow = [o for o in during if o.seconds > bound]
    assert slow == [], (name, [o.seconds for o in slow][:5])
    refused = [o for o in during if o.status == 503]
    assert {o.caller for o in refused} <= affected, name
    assert refused, f"{name}: the fault was never felt"
    firsts = []
    for caller in affected:
        after = [o.at + o.seconds for o in gateway.observations
                 if o.caller == caller and o.at >= ended and o.status == 200]
        assert after, f"{name}: caller {caller} never recovered"
        firsts.append(min(after) - ended)
    unaffected = [o for o in during if o.caller not in affected]
    return {"calls": len(during), "503": len(refused),
            "max_call": max(o.seconds for o in during),
            "recovery": max(firsts), "unaffected_ok": sum(o.status == 200 for o in unaffected)}


@pytest.mark.figure(11, tried="private PostgreSQL (initdb, pg_ctl) and Redis; the production "
                    "server on them; 2 open-model callers and 1 free-plan closed-model caller "
                    "(needs Redis); PostgreSQL stopped and restarted, Redis stopped and restarted, "
                    "Redis frozen (SIGSTOP) and thawed")
def test_outages_answer_503_json_in_bounded_time_and_recover(tmp_path, figure):
    opened = [customer_create(purchased_usd=1_000) for _ in range(2)]
    for customer in opened:
        balance_set(account_id=customer.account_id, balance_nanos=500 * USD)
    free = customer_create()
    postgres, redis_server = PrivatePostgres(), PrivateRedis()
    server = None
    gateway = None
    reports = {}
    try:
        postgres.init()
        postgres.copy_from(test_database_url())
        redis_server.start()
        server = production_server(database_url=postgres.url, redis_url=redis_server.url,
                                   token=INTERNAL_TOKEN, log_path=tmp_path / "server.log")
        server.start()
        callers = [Caller(c.key, MODEL_7B, OPEN_USAGE) for c in opened]
        callers.append(Caller(free.key, MODEL_CLOSED_CHEAP,
                              {"input_tokens": 100, "output_tokens": 10}, pace_seconds=0.2))
        gateway = Gateway(port_of=lambda: server.port, token=INTERNAL_TOKEN,
                          callers=callers, prefix="fault")
        gateway.start()
        everyone, closed_caller = {0, 1, 2}, {2}
        faults = [
            ("PostgreSQL stopped", lambda: postgres.stop("fast"), postgres.start,
             everyone, PG_BOUND_SECONDS),
            ("Redis stopped", redis_server.stop, redis_server.start, closed_caller,
             REDIS_BOUND_SECONDS),
            ("Redis frozen", redis_server.freeze, redis_server.thaw, closed_caller,
             REDIS_BOUND_SECONDS),
        ]
        for name, break_it, mend_it, affected, bound in faults:
            time.sleep(1.5)
            started = time.monotonic()
            break_it()
            time.sleep(FAULT_SECONDS)
            mend_it()
            ended = time.monotonic()
            time.sleep(2.5)
            reports[name] = phase_report(gateway, name, started, ended, affected, bound)
        gateway.stop()
        retried = gateway.retry_unfinished()
        ended_runs = assert_every_run_ended_once(gateway, postgres.url, "fault")
        checked = ledger_check(postgres.url, redis_server.url)
        summary = "; ".join(
            f"{name}: {r['calls']} calls, {r['503']} answered 503 JSON, slowest "
            f"{r['max_call']:.2f} s, recovered {r['recovery']:.2f} s after"
            + (f", {r['unaffected_ok']} open-model runs went on" if "Redis" in name else "")
            for name, r in reports.items())
        figure.add(counts=f"{FAULT_SECONDS} s per fault; {retried} runs retried after, "
                          f"{ended_runs['holds']} holds each settled once; ledger_check "
                          f"exit {checked.returncode}",
                   measured=summary + " (recovery p50 over faults "
                   f"{statistics.median(r['recovery'] for r in reports.values()):.2f} s)")
        assert checked.returncode == 0, checked.stdout + checked.stderr
        for name in ("Redis stopped", "Redis frozen"):
            assert reports[name]["unaffected_ok"] > 0, name
    finally:
        if gateway is not None:
            gateway.stop()
        if server is not None:
            server.stop()
        if redis_server.process is not None:
            redis_server.thaw()  # a frozen server cannot take its SIGTERM
            redis_server.stop()
        postgres.remove()
