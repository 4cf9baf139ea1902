"""Figures 1, 2, 3 and 5: the run path's money and slots under real concurrency (threads
on their own PostgreSQL connections, tests/runpath.py), on committed data."""

import random
import statistics
import threading
import time
from datetime import timedelta

import pytest
import time_machine
from django.conf import settings as django_settings
from django.db import connection

from accounts.models import Account
from billing.models import LedgerTransaction
from config.api import ApplicationError
from metering.authorize import hold_authorize
from metering.holds import hold_heartbeat, hold_release
from metering.models import Hold, UsageRecord
from metering.selectors import books_discrepancies
from metering.settle import Usage, hold_settle
from metering.tasks import holds_expire_due
from tests.metering.test_run_path_concurrency import SlotWatcher
from tests.prove.figures import scaled
from tests.runpath import (
    CONCURRENT_CONNECTIONS,
    MODEL_7B,
    MODEL_15B,
    MODEL_70B,
    RATE_7B,
    USD,
    authorize_body,
    balance_set,
    customer_create,
    open_holds,
    run_in_threads,
    service_client,
)

pytestmark = [pytest.mark.django_db(transaction=True, serialized_rollback=True),
              pytest.mark.usefixtures("catalog")]


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


# --- Figure 1 ---------------------------------------------------------------------------

CALLERS = 200
REPEATS = scaled(ci=4, full=100)


@pytest.mark.slow
@pytest.mark.figure(1, tried=f"{CALLERS} barrier-synchronised authorizes over the API, "
                    f"{CONCURRENT_CONNECTIONS} threads each on its own PostgreSQL "
                    "connection, against a balance covering exactly K (K drawn 1..199, "
                    "one nano-dollar short of K+1)")
def test_overdraft_race_admits_exactly_the_covered_number(figure):
    rng = random.Random(1)
    seconds = 60
    reserve = seconds * RATE_7B
    customer = customer_create(purchased_usd=1_000)  # 400 slots: money is the only limit
    admitted_counts = []
    waves = -(-CALLERS // CONCURRENT_CONNECTIONS)

    for repeat in range(REPEATS):
        covered = rng.randint(1, CALLERS - 1)
        balance = covered * reserve + reserve - 1
        balance_set(account_id=customer.account_id, balance_nanos=balance)
        barrier = threading.Barrier(CONCURRENT_CONNECTIONS)
        lowest_available = []

        def caller(i, repeat=repeat, barrier=barrier, lowest_available=lowest_available):
            client = service_client()
            responses = []
            for wave in range(waves):
                barrier.wait(timeout=60)
                if wave * CONCURRENT_CONNECTIONS + i >= CALLERS:
                    continue
                body = authorize_body(customer, MODEL_7B, request_id=f"r{repeat}-{wave}-{i}",
                                      estimate={"seconds": seconds})
                response = client.post("/internal/v1/authorize", body, format="json")
                responses.append(response)
                if response.status_code == 200:
                    lowest_available.append(response.json()["available_usd"])
            return responses

        responses = [r for rs in run_in_threads(CONCURRENT_CONNECTIONS, caller) for r in rs]
        ok = [r for r in responses if r.status_code == 200]
        refused = [r for r in responses if r.status_code != 200]
        assert len(responses) == CALLERS
        assert len(ok) == covered, (repeat, covered, len(ok))
        assert {(r.status_code, r.json()["code"]) for r in refused} <= {
            (402, "insufficient_credits")}
        assert all(not value.startswith("-") for value in lowest_available)
        account = customer.account()
        assert account.held_nanos == covered * reserve <= account.balance_nanos == balance
        assert open_holds(customer.account_id)["n"] == covered
        admitted_counts.append(covered)
        for response in ok:
            hold_release(hold_id=response.json()["hold_id"])
        figure.add(counts=f"{CALLERS} authorizes x {len(admitted_counts)} repeats: exactly K "
                          f"admitted every time (K from {min(admitted_counts)} to "
                          f"{max(admitted_counts)}), the rest 402, available never negative")
    assert books_discrepancies() == []


# --- Figure 2 ---------------------------------------------------------------------------

WORKERS = 6
OPERATIONS = scaled(ci=200, full=1_500)


@pytest.mark.slow
@pytest.mark.figure(2, tried="mixed authorize (7B/15B/70B), settle, late settle (after the "
                    "lease), release, heartbeat, vanish (lease expiry) and sweep on one "
                    "10-slot account, 400 ms leases; a watcher reads slots vs open holds")
def test_slots_never_exceed_the_limit_and_none_leak(settings, eager_tasks, figure):
    settings.HOLD_LEASE = timedelta(milliseconds=400)
    customer = customer_create(purchased_usd=25)
    balance_set(account_id=customer.account_id, balance_nanos=1_000 * USD)
    limit = customer.account().tier_concurrency
    assert limit == 10
    watcher = SlotWatcher(customer.account_id)
    watcher.start()
    running: list = []
    vanished: list = []
    lock = threading.Lock()
    outcomes: dict[str, int] = {}

    def count(name):
        with lock:
            outcomes[name] = outcomes.get(name, 0) + 1

    def take(pool, rng):
        with lock:
            return pool.pop(rng.randrange(len(pool))) if pool else None

    def worker(i):
        rng = random.Random(i)
        for n in range(OPERATIONS):
            action = rng.choices(["authorize", "settle", "late_settle", "release",
                                  "heartbeat", "vanish", "sweep"],
                                 weights=[10, 4, 1, 2, 1, 2, 1])[0]
            try:
                if action in ("authorize", "vanish"):
                    authorization = hold_authorize(
                        api_key=customer.key, request_id=f"mix-{i}-{n}",
                        model_id=rng.choice([MODEL_7B, MODEL_7B, MODEL_15B, MODEL_70B]),
                        estimate_seconds=rng.randint(1, 120))
                    with lock:
                        (running if action == "authorize" else vanished).append(
                            authorization.hold_id)
                elif action == "settle" and (hold_id := take(running, rng)):
                    hold_settle(hold_id=hold_id, usage=Usage(inference_seconds=rng.randint(
                        0, 200)))
                elif action == "late_settle" and (hold_id := take(vanished, rng)):
                    time.sleep(0.45)  # past its lease: charged, its slot freed once
                    hold_settle(hold_id=hold_id, usage=Usage(inference_seconds=3))
                elif action == "release" and (hold_id := take(running, rng)):
                    hold_release(hold_id=hold_id)
                elif action == "heartbeat" and running:
                    with lock:
                        hold_id = rng.choice(running)
                    hold_heartbeat(hold_id=hold_id)
                elif action == "sweep":
                    holds_expire_due.apply()
                count(f"{action}:ok")
            except ApplicationError as exc:
                assert exc.code in {"concurrency_limit", "hold_closed"}, (action, exc.code)
                count(f"{action}:{exc.code}")

    try:
        run_in_threads(WORKERS, worker)
    finally:
        watcher.stop.set()
        watcher.join()
    time.sleep(settings.HOLD_LEASE.total_seconds() + 0.1)
    holds_expire_due.apply()

    account = Account.objects.get(id=customer.account_id)
    statuses = {s: Hold.objects.filter(account_id=customer.account_id, status=s).count()
                for s in ("settled", "released", "expired", "open")}
    figure.add(counts=f"{WORKERS} workers x {OPERATIONS} operations = {WORKERS * OPERATIONS}; "
                      f"{watcher.samples} watcher samples, max {watcher.max_slots} of "
                      f"{limit} slots; holds ended settled {statuses['settled']}, released "
                      f"{statuses['released']}, lease-expired {statuses['expired']}; "
                      f"{outcomes.get('authorize:concurrency_limit', 0)} refused at the cap; "
                      f"{statuses['open']} open and {account.slots_in_use} slots in use "
                      "at the end")
    assert watcher.violations == []
    assert watcher.max_slots == limit
    assert outcomes.get("authorize:concurrency_limit", 0) > 0
    assert all(statuses[s] > 0 for s in ("settled", "released", "expired"))
    assert outcomes.get("late_settle:ok", 0) > 0
    assert (account.slots_in_use, account.held_nanos, statuses["open"]) == (0, 0, 0)
    assert books_discrepancies() == []


# --- Figure 3 ---------------------------------------------------------------------------

LEASE = timedelta(seconds=1)
SWEEP_SECONDS = 0.5
VANISHING = scaled(ci=20, full=200)


@pytest.mark.slow
@pytest.mark.figure(3, tried=f"gateways vanish after authorize; lease {LEASE.total_seconds():g}"
                    f" s, the periodic sweep every {SWEEP_SECONDS:g} s; time from its "
                    "authorize (its last sign of life) until its slot and reservation are "
                    "free")
def test_a_vanished_gateways_slots_and_money_come_back_within_lease_plus_sweep(
        settings, eager_tasks, figure):
    settings.HOLD_LEASE = LEASE
    customer = customer_create(purchased_usd=1_000)
    balance_set(account_id=customer.account_id, balance_nanos=100 * USD)
    stop = threading.Event()
    sweeps, beat_errors = [], []

    def beat():  # what `celery beat` does, on a short interval
        try:
            while not stop.wait(SWEEP_SECONDS):
                started = time.monotonic()
                holds_expire_due.apply()
                sweeps.append(time.monotonic() - started)
        except Exception as exc:  # reported by the test below
            beat_errors.append(exc)
        finally:
            connection.close()

    vanished_at: dict = {}
    freed_at: dict = {}
    all_vanished = threading.Event()

    def watch():  # when each hold is seen expired, polled from the first authorize on
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and not (
                    all_vanished.is_set() and len(freed_at) >= VANISHING):
                for hold_id in Hold.objects.filter(
                        account_id=customer.account_id,
                        status=Hold.Status.EXPIRED).values_list("id", flat=True):
                    freed_at.setdefault(str(hold_id), time.monotonic())
                time.sleep(0.02)
        finally:
            connection.close()

    rng = random.Random(3)
    threads = [threading.Thread(target=beat, daemon=True),
               threading.Thread(target=watch, daemon=True)]
    try:
        for n in range(VANISHING):
            authorization = hold_authorize(api_key=customer.key, model_id=MODEL_7B,
                                           request_id=f"vanish-{n}", estimate_seconds=60)
            vanished_at[str(authorization.hold_id)] = time.monotonic()
            if n == 0:
                for thread in threads:
                    thread.start()
            time.sleep(rng.uniform(0, 0.05))
        all_vanished.set()
        threads[1].join()
    finally:
        all_vanished.set()
        stop.set()
        for thread in threads:
            if thread.ident is not None:  # started
                thread.join()
    assert beat_errors == []
    recovery = [freed_at[h] - vanished_at[h] for h in freed_at] or [float("inf")]
    # The bound: the lease, the wait for the next sweep, and that sweep's own run (which a
    # busy machine stretches); plus the poll's granularity.
    slowest_sweep = max(sweeps, default=0.0)
    bound = LEASE.total_seconds() + SWEEP_SECONDS + slowest_sweep
    figure.add(counts=f"{VANISHING} vanished holds, {len(sweeps)} sweeps",
               measured=f"recovery p50 {statistics.median(recovery):.2f} s, max "
                        f"{max(recovery):.2f} s (bound: lease {LEASE.total_seconds():g} s + "
                        f"sweep interval {SWEEP_SECONDS:g} s + slowest sweep "
                        f"{slowest_sweep:.2f} s = {bound:.2f} s)")
    assert len(freed_at) == VANISHING
    assert max(recovery) <= bound + 0.25
    assert min(recovery) >= LEASE.total_seconds()
    account = customer.account()
    assert (account.slots_in_use, account.held_nanos, account.balance_nanos) == (
        0, 0, 100 * USD)


# --- Figure 5 ---------------------------------------------------------------------------

CONCURRENT_SETTLES = 20
SEQUENTIAL_SETTLES = scaled(ci=100, full=1_000)


@pytest.mark.figure(5, tried="one hold settled by concurrent callers, then replayed "
                    "sequentially with the same and with different usage; a released hold "
                    "settled; a hold settled past the late-settle window")
def test_duplicate_settles_charge_once_and_closed_holds_are_refused(figure):
    customer = customer_create()
    hold_id = hold_authorize(api_key=customer.key, model_id=MODEL_7B,
                             request_id="settle-once").hold_id
    body = {"inference_seconds": 12.4, "load_seconds": 31.0}

    def caller(i):
        response = service_client().post(f"/internal/v1/holds/{hold_id}/settle", body,
                                          format="json")
        return response.status_code, response.json()

    concurrent = run_in_threads(CONCURRENT_SETTLES, caller)
    client = service_client()
    sequential = []
    for n in range(SEQUENTIAL_SETTLES):
        replay = body if n % 2 else {"inference_seconds": n}  # other usage: same answer
        response = client.post(f"/internal/v1/holds/{hold_id}/settle", replay, format="json")
        sequential.append((response.status_code, response.json()))
    first = concurrent[0]
    assert first[0] == 200 and first[1]["charged_usd"] == "0.000936000"
    assert all(result == first for result in concurrent + sequential)
    assert LedgerTransaction.objects.filter(account_id=customer.account_id,
                                            kind="usage").count() == 1
    assert UsageRecord.objects.filter(hold_id=hold_id).count() == 1
    assert customer.account().balance_nanos == USD - 13 * RATE_7B

    # A released hold: refused with the contract's code, nothing charged.
    released = hold_authorize(api_key=customer.key, model_id=MODEL_7B,
                              request_id="released").hold_id
    assert client.post(f"/internal/v1/holds/{released}/release").status_code == 200
    refused = client.post(f"/internal/v1/holds/{released}/settle", body, format="json")
    assert (refused.status_code, refused.json()["code"]) == (409, "hold_closed")

    # Past the late-settle window (lease + 24 h): refused, nothing charged.
    late = hold_authorize(api_key=customer.key, model_id=MODEL_7B,
                          request_id="too-late").hold_id
    lease_end = Hold.objects.get(id=late).lease_expires_at
    with time_machine.travel(lease_end + django_settings.LATE_SETTLE_WINDOW
                             + timedelta(microseconds=1), tick=False):
        too_late = service_client().post(f"/internal/v1/holds/{late}/settle", body,
                                         format="json")
    assert (too_late.status_code, too_late.json()["code"]) == (409, "hold_closed")
    assert UsageRecord.objects.filter(account_id=customer.account_id).count() == 1
    assert LedgerTransaction.objects.filter(account_id=customer.account_id,
                                            kind="usage").count() == 1
    figure.add(counts=f"{CONCURRENT_SETTLES} concurrent + {SEQUENTIAL_SETTLES} sequential "
                      "settles of one hold: 1 charge, every answer the first; released "
                      "hold and past-window settle: 409 hold_closed, nothing charged")
