"""The run path under real concurrency: threads, each on its own PostgreSQL connection,
released together by a barrier, against committed data (transactional tests)."""

import random
import threading
import time
from datetime import timedelta

import pytest
from django.db import connection

from accounts.models import Account
from billing.models import LedgerEntry, LedgerTransaction
from config.api import ApplicationError
from metering.authorize import hold_authorize
from metering.holds import hold_heartbeat, hold_release
from metering.models import Hold, UsageRecord
from metering.selectors import books_discrepancies
from metering.settle import Usage, hold_settle
from metering.tasks import holds_expire_due
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

INSUFFICIENT_402 = {"status": 402, "error": "Payment Required", "code": "insufficient_credits",
                    "message": "Insufficient credits. Please add credits to continue."}


@pytest.mark.slow
@pytest.mark.parametrize("admitted", [37, 1, 150])
def test_barrier_synchronised_authorizes_admit_exactly_the_covered_number(admitted):
    # Given an account whose tier has slots to spare (400) and whose credit covers exactly
    # `admitted` reservations: one nano-dollar short of one more.
    callers = 200
    seconds = 60
    reserve = seconds * RATE_7B
    customer = customer_create(purchased_usd=1_000)
    balance = admitted * reserve + reserve - 1
    balance_set(account_id=customer.account_id, balance_nanos=balance)
    ledger_before = (LedgerTransaction.objects.count(), LedgerEntry.objects.count())

    # When 200 authorizes race: CONCURRENT_CONNECTIONS threads (one connection each),
    # every wave of calls released together by the barrier.
    waves = -(-callers // CONCURRENT_CONNECTIONS)
    barrier = threading.Barrier(CONCURRENT_CONNECTIONS)

    def caller(i):
        client = service_client()
        responses = []
        for wave in range(waves):
            barrier.wait(timeout=60)
            if wave * CONCURRENT_CONNECTIONS + i >= callers:
                continue
            body = authorize_body(customer, MODEL_7B, request_id=f"race-{wave}-{i}",
                                  estimate={"seconds": seconds})
            responses.append(client.post("/internal/v1/authorize", body, format="json"))
        return responses

    responses = [r for rs in run_in_threads(CONCURRENT_CONNECTIONS, caller) for r in rs]

    # Then exactly `admitted` were admitted; every other caller got the documented 402.
    assert len(responses) == callers
    ok = [r for r in responses if r.status_code == 200]
    refused = [r for r in responses if r.status_code != 200]
    assert len(ok) == admitted
    assert {r.status_code for r in refused} == {402}
    for response in refused:
        assert {k: response.json()[k] for k in INSUFFICIENT_402} == INSUFFICIENT_402
    assert len({r.json()["hold_id"] for r in ok}) == admitted
    assert {r.json()["reserved_usd"] for r in ok} == {"0.004320000"}
    # And the account holds exactly their reservations and slots, nothing else moved.
    account = customer.account()
    assert account.held_nanos == admitted * reserve
    assert account.slots_in_use == admitted
    assert account.balance_nanos == balance
    assert open_holds(customer.account_id) == {"n": admitted, "held": admitted * reserve,
                                               "slots": admitted}
    assert Hold.objects.filter(account_id=customer.account_id).count() == admitted
    assert (LedgerTransaction.objects.count(), LedgerEntry.objects.count()) == ledger_before
    assert books_discrepancies() == []

    # And when they are all released, the account is back where it started.
    for response in ok:
        hold_release(hold_id=response.json()["hold_id"])
    account.refresh_from_db()
    assert (account.held_nanos, account.slots_in_use, account.balance_nanos) == (0, 0, balance)


def test_racing_callers_with_one_request_id_get_one_hold():
    # Given an account with one slot and credit for many runs.
    customer = customer_create()
    callers = 20

    # When 20 callers race with the same request_id.
    def caller(i):
        try:
            authorization = hold_authorize(
                api_key=customer.key, model_id=MODEL_7B, request_id="one-run",
                estimate_seconds=30)
        except ApplicationError as exc:
            return exc.code
        return authorization.hold_id, authorization.reserved_nanos

    results = run_in_threads(callers, caller)

    # Then every caller got the same hold, and it reserved money and a slot once.
    assert len(set(results)) == 1, results
    ((hold_id, reserved),) = set(results)
    hold = Hold.objects.get(account_id=customer.account_id)
    assert hold.id == hold_id
    account = customer.account()
    assert (account.held_nanos, account.slots_in_use) == (reserved, 1) == (30 * RATE_7B, 1)


def test_concurrent_and_repeated_settles_of_one_hold_charge_once():
    # Given an open 7B hold on an account with $1.
    customer = customer_create()
    hold_id = hold_authorize(api_key=customer.key, model_id=MODEL_7B,
                                      request_id="settle-once").hold_id
    body = {"inference_seconds": 12.4, "load_seconds": 31.0}

    # When 10 callers settle it at once, then 100 more one after another.
    def caller(i):
        response = service_client().post(f"/internal/v1/holds/{hold_id}/settle", body,
                                          format="json")
        return response.status_code, response.json()

    concurrent = run_in_threads(10, caller)
    client = service_client()
    sequential = []
    for _ in range(100):
        response = client.post(f"/internal/v1/holds/{hold_id}/settle", body, format="json")
        sequential.append((response.status_code, response.json()))

    # Then all 110 responses are the first one: 13 billed seconds, charged once.
    first = concurrent[0]
    assert first[0] == 200
    assert first[1]["charged_usd"] == "0.000936000"
    assert first[1]["billed_seconds"] == 13
    assert all(result == first for result in concurrent + sequential)
    assert LedgerTransaction.objects.filter(account_id=customer.account_id,
                                            kind="usage").count() == 1
    assert UsageRecord.objects.filter(hold_id=hold_id).count() == 1
    account = customer.account()
    assert account.balance_nanos == USD - 13 * RATE_7B
    assert (account.held_nanos, account.slots_in_use) == (0, 0)


class SlotWatcher(threading.Thread):
    """Reads the account continuously on its own connection: slots never above the
    tier's limit, and (in one snapshot) the counters equal the open holds."""

    SQL = """
    SELECT a.slots_in_use, a.tier_concurrency, a.held_nanos,
           (SELECT COALESCE(SUM(h.weight), 0) FROM metering_hold h
             WHERE h.account_id = a.id AND h.status = 'open'),
           (SELECT COALESCE(SUM(h.reserved_nanos), 0) FROM metering_hold h
             WHERE h.account_id = a.id AND h.status = 'open')
      FROM accounts_account a WHERE a.id = %s
    """

    def __init__(self, account_id):
        super().__init__()
        self.account_id = account_id
        self.stop = threading.Event()
        self.samples = 0
        self.max_slots = 0
        self.violations: list = []

    def run(self):
        try:
            with connection.cursor() as cursor:
                while not self.stop.is_set():
                    cursor.execute(self.SQL, [self.account_id])
                    slots, limit, held, open_slots, open_held = cursor.fetchone()
                    self.samples += 1
                    self.max_slots = max(self.max_slots, slots)
                    if not (0 <= slots <= limit and slots == open_slots
                            and held == open_held >= 0):
                        self.violations.append((slots, limit, held, open_slots, open_held))
        finally:
            connection.close()


@pytest.mark.slow
def test_slots_never_exceed_the_limit_under_mixed_operations(settings, eager_tasks):
    # Given an account on the $25 tier (10 slots, up to 70B) with plenty of credit, short
    # leases (so that vanished callers' holds lapse during the test), and a watcher.
    settings.HOLD_LEASE = timedelta(milliseconds=400)
    customer = customer_create(purchased_usd=25)
    balance_set(account_id=customer.account_id, balance_nanos=500 * USD)
    limit = customer.account().tier_concurrency
    assert limit == 10
    watcher = SlotWatcher(customer.account_id)
    watcher.start()

    workers, operations = 6, 400
    shared: list = []  # hold ids any worker may settle, release or heartbeat
    shared_lock = threading.Lock()
    outcomes: dict = {}

    def count(name):
        with shared_lock:
            outcomes[name] = outcomes.get(name, 0) + 1

    def pick(rng):
        with shared_lock:
            return rng.choice(shared) if shared else None

    def forget(hold_id):  # settled or released: mostly act on open holds from now on
        with shared_lock:
            if hold_id in shared:
                shared.remove(hold_id)

    def worker(i):
        rng = random.Random(i)
        for n in range(operations):
            action = rng.choices(
                ["authorize", "settle", "release", "heartbeat", "vanish", "sweep"],
                weights=[10, 4, 2, 1, 1, 1])[0]
            try:
                if action in ("authorize", "vanish"):
                    model = rng.choice([MODEL_7B, MODEL_7B, MODEL_15B, MODEL_70B])
                    authorization = hold_authorize(
                        api_key=customer.key, model_id=model, request_id=f"mix-{i}-{n}",
                        estimate_seconds=rng.randint(1, 120))
                    if action == "authorize":  # a vanished caller never reports back
                        with shared_lock:
                            shared.append(authorization.hold_id)
                elif action == "settle":
                    if (hold_id := pick(rng)) is not None:
                        hold_settle(hold_id=hold_id, usage=Usage(
                            inference_seconds=rng.randint(0, 200)))
                        forget(hold_id)
                elif action == "release":
                    if (hold_id := pick(rng)) is not None:
                        hold_release(hold_id=hold_id)
                        forget(hold_id)
                elif action == "heartbeat":
                    if (hold_id := pick(rng)) is not None:
                        hold_heartbeat(hold_id=hold_id)
                else:
                    from metering.tasks import holds_expire_due

                    holds_expire_due.apply()
                count(f"{action}:ok")
            except ApplicationError as exc:
                assert exc.code in {"concurrency_limit", "hold_closed"}, (action, exc.code)
                count(f"{action}:{exc.code}")

    try:
        run_in_threads(workers, worker)
    finally:
        watcher.stop.set()
        watcher.join()

    # Then the watcher never saw more slots than the tier allows, nor counters that
    # disagreed with the open holds, and the limit was actually reached.
    assert watcher.violations == []
    assert watcher.samples > 100
    assert watcher.max_slots == limit
    assert outcomes.get("authorize:concurrency_limit", 0) > 0
    assert outcomes.get("settle:ok", 0) > 100

    # And once every lease has run out and the periodic task has run, nothing leaked.
    time.sleep(settings.HOLD_LEASE.total_seconds() + 0.1)
    holds_expire_due.apply()
    account = Account.objects.get(id=customer.account_id)
    assert (account.slots_in_use, account.held_nanos) == (0, 0)
    assert not Hold.objects.filter(status=Hold.Status.OPEN).exists()
    assert Hold.objects.filter(status=Hold.Status.EXPIRED).exists()
    assert books_discrepancies() == []
