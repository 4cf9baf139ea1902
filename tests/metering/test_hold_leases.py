"""Holds are leases: a caller that vanishes cannot keep money or slots past its lease,
a late settle is still charged within the window, a heartbeat racing the sweep either
keeps its hold or is refused (never both), and expired credit is never spent."""

import threading
import time
from collections.abc import Callable
from datetime import timedelta

import pytest
import time_machine
from django.db import connection, transaction

from billing.credit import credit_grant
from billing.models import CreditLot, LedgerTransaction
from config.api import ApplicationError
from metering.apis import settlement_output
from metering.authorize import hold_authorize
from metering.holds import HoldReleased, hold_heartbeat, hold_release, holds_expire
from metering.models import Hold, UsageRecord
from metering.settle import Usage, hold_settle
from metering.tasks import holds_expire_due
from tests.runpath import (
    MODEL_7B,
    RATE_7B,
    USD,
    authorize_body,
    balance_set,
    customer_create,
    open_holds,
    utc,
    world_snapshot,
)

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("catalog")]

T0 = utc(2030, 3, 4, 10, 0, 0)
LEASE = timedelta(seconds=120)
WINDOW = timedelta(hours=24)
MICROSECOND = timedelta(microseconds=1)


def authorize(customer, *, now, seconds=60, request_id=None):
    return hold_authorize(api_key=customer.key, model_id=MODEL_7B,
                                   request_id=request_id or f"run-{now.isoformat()}",
                                   estimate_seconds=seconds, now=now)


def refusal(call) -> ApplicationError:
    with pytest.raises(ApplicationError) as caught:
        call()
    return caught.value


def test_the_periodic_task_frees_a_vanished_callers_hold_after_its_lease(api, eager_tasks):
    with time_machine.travel(T0, tick=False) as clock:
        # Given a hold whose caller vanished after authorize (one slot, $0.00432 held).
        customer = customer_create()
        response = api.post("/internal/v1/authorize", authorize_body(customer),
                            format="json")
        assert response.status_code == 200
        hold_id = response.json()["hold_id"]
        before = world_snapshot(customer.account_id)
        assert (before["account"]["held_nanos"], before["account"]["slots_in_use"]) == (
            60 * RATE_7B, 1)

        # When the periodic task runs a second before the lease ends, nothing changes.
        clock.move_to(T0 + LEASE - timedelta(seconds=1))
        assert holds_expire_due.apply().get() == 0
        assert world_snapshot(customer.account_id) == before

        # When it runs once the lease has ended.
        clock.move_to(T0 + LEASE)
        assert holds_expire_due.apply().get() == 1

        # Then the hold is expired, its slot and money are free, and nothing was charged.
        after = world_snapshot(customer.account_id)
        assert Hold.objects.get(id=hold_id).status == Hold.Status.EXPIRED
        assert (after["account"]["held_nanos"], after["account"]["slots_in_use"]) == (0, 0)
        assert after["account"]["balance_nanos"] == before["account"]["balance_nanos"] == USD
        for unchanged in ("usage_records", "ledger_transactions", "ledger_entries", "lots"):
            assert after[unchanged] == before[unchanged]

        # And a rerun of the task is a no-op.
        assert holds_expire_due.apply().get() == 0
        assert world_snapshot(customer.account_id) == after


def test_the_next_authorize_frees_a_lapsed_slot_without_the_periodic_task():
    # Given the only slot of a $0 tier held by a caller that vanished at T0.
    customer = customer_create(now=T0 - timedelta(days=1))
    lost = authorize(customer, now=T0)

    # When another run asks a minute later, the slot is still taken.
    error = refusal(lambda: authorize(customer, now=T0 + timedelta(seconds=60)))
    assert (error.status, error.code) == (429, "concurrency_limit")
    assert (error.extra["limit"], error.extra["in_use"]) == (1, 1)

    # When it asks again once the lease has ended, it is admitted.
    admitted = authorize(customer, now=T0 + LEASE, request_id="second")

    # Then the vanished hold was expired on the way, without a charge.
    assert Hold.objects.get(id=lost.hold_id).status == Hold.Status.EXPIRED
    account = customer.account()
    assert (account.held_nanos, account.slots_in_use) == (admitted.reserved_nanos, 1)
    assert account.balance_nanos == USD
    assert not UsageRecord.objects.exists()


def test_the_next_authorize_frees_lapsed_money_without_the_periodic_task():
    # Given a 10-slot account whose credit covers one reservation, held by a vanished
    # caller.
    customer = customer_create(purchased_usd=25, now=T0 - timedelta(days=1))
    balance_set(account_id=customer.account_id, balance_nanos=60 * RATE_7B,
                now=T0 - timedelta(days=1))
    lost = authorize(customer, now=T0)

    # When another run asks before the lease ends, the money is still held.
    error = refusal(lambda: authorize(customer, now=T0 + LEASE - MICROSECOND))
    assert (error.status, error.code) == (402, "insufficient_credits")

    # When it asks once the lease has ended, it gets the money back and is admitted.
    admitted = authorize(customer, now=T0 + LEASE, request_id="second")
    assert Hold.objects.get(id=lost.hold_id).status == Hold.Status.EXPIRED
    account = customer.account()
    assert (account.held_nanos, account.slots_in_use) == (admitted.reserved_nanos, 1)


def test_a_late_settle_within_the_window_is_charged_as_usual(eager_tasks):
    # Given a hold that expired (freed by the sweep) because its caller went quiet.
    customer = customer_create(now=T0 - timedelta(days=1))
    hold = authorize(customer, now=T0)
    holds_expire(account_id=customer.account_id, now=T0 + LEASE)
    assert Hold.objects.get(id=hold.hold_id).status == Hold.Status.EXPIRED

    # When the run's settle arrives 23 hours later.
    result = settlement_output(hold_settle(
        hold_id=hold.hold_id, now=T0 + timedelta(hours=23), usage=Usage(inference_seconds=100)))

    # Then it is charged in full; the slot and reservation, freed already, stay freed.
    assert (result["status"], result["charged_usd"]) == ("settled", "0.007200000")
    account = customer.account()
    assert account.balance_nanos == USD - 100 * RATE_7B
    assert (account.held_nanos, account.slots_in_use) == (0, 0)
    assert UsageRecord.objects.get(hold_id=hold.hold_id).charged_nanos == 100 * RATE_7B


def test_a_settle_after_the_lease_but_before_any_sweep_charges_and_frees_the_slot():
    customer = customer_create(now=T0 - timedelta(days=1))
    hold = authorize(customer, now=T0)

    result = settlement_output(hold_settle(hold_id=hold.hold_id, now=T0 + timedelta(hours=2),
                                  usage=Usage(inference_seconds=10)))

    assert result["charged_usd"] == "0.000720000"
    account = customer.account()
    assert (account.held_nanos, account.slots_in_use) == (0, 0)
    assert account.balance_nanos == USD - 10 * RATE_7B


@pytest.mark.parametrize("swept", [True, False], ids=["swept", "never-swept"])
def test_a_settle_after_the_late_settle_window_is_refused(swept, api):
    # Given two holds whose leases ended at T0 + 120 s (swept by the task, or not).
    customer = customer_create(purchased_usd=3, now=T0 - timedelta(days=1))
    at_edge = authorize(customer, now=T0, request_id="edge")
    too_late = authorize(customer, now=T0, request_id="too-late")
    if swept:
        holds_expire(account_id=customer.account_id, now=T0 + LEASE)

    # When one settles exactly at the end of the window, it is still charged.
    edge = settlement_output(hold_settle(hold_id=at_edge.hold_id, now=T0 + LEASE + WINDOW,
                                usage=Usage(inference_seconds=1)))
    assert edge["charged_usd"] == "0.000072000"

    # When the other settles a microsecond later, it is refused and nothing is written.
    before = world_snapshot(customer.account_id)
    error = refusal(lambda: hold_settle(
        hold_id=too_late.hold_id, now=T0 + LEASE + WINDOW + MICROSECOND,
        usage=Usage(inference_seconds=1)))
    assert (error.status, error.code, error.extra) == (409, "hold_closed",
                                                       {"hold_status": "expired"})
    assert world_snapshot(customer.account_id) == before

    # And through the API, a day later still, it is 409 hold_closed too.
    with time_machine.travel(T0 + LEASE + WINDOW + timedelta(days=1), tick=False):
        response = api.post(f"/internal/v1/holds/{too_late.hold_id}/settle",
                            {"inference_seconds": 1}, format="json")
    assert response.status_code == 409
    assert response.json()["code"] == "hold_closed"
    assert world_snapshot(customer.account_id) == before


def test_a_heartbeat_keeps_a_long_run_alive_past_its_first_lease(eager_tasks):
    customer = customer_create(now=T0 - timedelta(days=1))
    hold = authorize(customer, now=T0)

    # When the gateway heartbeats at 100 s, the sweep at 130 s leaves the hold open.
    beat = hold_heartbeat(hold_id=hold.hold_id, now=T0 + timedelta(seconds=100))
    assert beat.lease_expires_at == T0 + timedelta(seconds=100) + LEASE
    holds_expire(account_id=customer.account_id, now=T0 + timedelta(seconds=130))
    assert Hold.objects.get(id=hold.hold_id).status == Hold.Status.OPEN
    assert customer.account().slots_in_use == 1

    # When the heartbeats stop, the extended lease ends and the sweep frees the slot; a
    # heartbeat after that is refused.
    holds_expire(account_id=customer.account_id,
                          now=T0 + timedelta(seconds=220))
    assert Hold.objects.get(id=hold.hold_id).status == Hold.Status.EXPIRED
    assert customer.account().slots_in_use == 0
    error = refusal(lambda: hold_heartbeat(hold_id=hold.hold_id,
                                                    now=T0 + timedelta(seconds=221)))
    assert (error.status, error.code) == (409, "hold_closed")


def test_a_heartbeat_after_the_lease_ended_is_refused_even_before_the_sweep():
    customer = customer_create(now=T0 - timedelta(days=1))
    hold = authorize(customer, now=T0)
    before = world_snapshot(customer.account_id)

    error = refusal(lambda: hold_heartbeat(hold_id=hold.hold_id, now=T0 + LEASE))

    assert (error.code, error.extra) == ("hold_closed", {"hold_status": "expired"})
    assert world_snapshot(customer.account_id) == before


def test_releasing_an_expired_hold_changes_no_money():
    customer = customer_create(now=T0 - timedelta(days=1))
    hold = authorize(customer, now=T0)
    holds_expire(account_id=customer.account_id, now=T0 + LEASE)
    before = customer.account()

    result = hold_release(hold_id=hold.hold_id, now=T0 + LEASE)
    again = hold_release(hold_id=hold.hold_id, now=T0 + LEASE)

    assert result == again == HoldReleased(hold_id=hold.hold_id)
    after = customer.account()
    assert (after.balance_nanos, after.held_nanos, after.slots_in_use) == (
        before.balance_nanos, 0, 0)
    error = refusal(lambda: hold_settle(hold_id=hold.hold_id, now=T0 + LEASE,
                                                 usage=Usage(inference_seconds=1)))
    assert (error.code, error.extra) == ("hold_closed", {"hold_status": "released"})


# --- The sweep racing a heartbeat (real connections) ----------------------------------------

REAL_CONNECTIONS = pytest.mark.django_db(transaction=True, serialized_rollback=True)


class OnItsOwnConnection(threading.Thread):
    """`call()` in a thread, on its own connection, inside a transaction that is kept
    open (its row locks held) until `commit()`; `result` is what it returned or raised."""

    def __init__(self, call: Callable[[], object]):
        super().__init__(daemon=True)
        self.call = call
        self.pid: int | None = None
        self.result: object = None
        self.connected = threading.Event()
        self.called = threading.Event()
        self._commit = threading.Event()

    def run(self) -> None:
        try:
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_backend_pid()")
                self.pid = cursor.fetchone()[0]
            self.connected.set()
            with transaction.atomic():
                try:
                    self.result = self.call()
                finally:
                    self.called.set()
                    assert self._commit.wait(30), "never told to commit"
        except BaseException as exc:  # reported to the test as the call's result
            self.result = exc
        finally:
            self.connected.set()
            self.called.set()
            connection.close()

    def commit(self) -> None:
        self._commit.set()
        self.join(30)
        assert not self.is_alive(), "the transaction did not finish"


@pytest.fixture
def own_connection():
    """Start `call` on its own connection (OnItsOwnConnection); whatever a failing test
    left open is committed at teardown, so that no lock outlives the test."""
    started: list[OnItsOwnConnection] = []

    def start(call: Callable[[], object]) -> OnItsOwnConnection:
        session = OnItsOwnConnection(call)
        started.append(session)
        session.start()
        return session

    yield start
    for session in started:
        session.commit()


def waits_for_a_lock(session: OnItsOwnConnection) -> None:
    """Return once the session's connection is waiting for a lock another one holds."""
    assert session.connected.wait(30)
    for _ in range(3000):
        with connection.cursor() as cursor:
            cursor.execute("SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s",
                           [session.pid])
            (wait_event_type,) = cursor.fetchone()
        if wait_event_type == "Lock":
            return
        assert not session.called.is_set(), f"it did not wait: {session.result!r}"
        time.sleep(0.01)
    raise AssertionError("it never waited for a lock")


def sweep_at(when, account_id, *, by: str) -> Callable[[], object]:
    """The lease sweep at `when`: the service on the account, or the periodic task."""
    if by == "service":
        return lambda: holds_expire(account_id=account_id, now=when)

    def task():
        with time_machine.travel(when, tick=False):
            # Celery's "a task is running" flag is global to the process, and another
            # thread's eager task may hold it: this .get() is of a finished eager result.
            return holds_expire_due.apply().get(disable_sync_subtasks=False)

    return task


@REAL_CONNECTIONS
@pytest.mark.parametrize("by", ["service", "task"])
def test_a_heartbeat_committing_while_the_sweep_runs_keeps_its_hold(by, own_connection,
                                                                     eager_tasks):
    # Given a hold leased until T0 + 120 s, and a heartbeat at 100 s whose UPDATE is not
    # committed yet (its connection holds the row).
    customer = customer_create(now=T0 - timedelta(days=1))
    hold = authorize(customer, now=T0)
    beat = own_connection(lambda: hold_heartbeat(
        hold_id=hold.hold_id, now=T0 + timedelta(seconds=100)))
    assert beat.called.wait(30)
    assert not isinstance(beat.result, BaseException), beat.result

    # When the sweep runs on another connection a second after the old lease, and the
    # heartbeat commits while the sweep waits for it.
    sweep = own_connection(sweep_at(T0 + LEASE + timedelta(seconds=1), customer.account_id,
                                    by=by))
    waits_for_a_lock(sweep)
    beat.commit()
    sweep.commit()

    # Then the sweep expired nothing: the hold is open with the new lease, and its money
    # and slot are still counted.
    if by == "service":
        assert sweep.result == 0, sweep.result
    assert not isinstance(sweep.result, BaseException), sweep.result
    assert beat.result.lease_expires_at == T0 + timedelta(seconds=100) + LEASE
    stored = Hold.objects.get(id=hold.hold_id)
    assert (stored.status, stored.lease_expires_at, stored.closed_at) == (
        Hold.Status.OPEN, T0 + timedelta(seconds=100) + LEASE, None)
    account = customer.account()
    assert (account.held_nanos, account.slots_in_use) == (hold.reserved_nanos, 1)
    assert open_holds(customer.account_id) == {"n": 1, "held": hold.reserved_nanos,
                                               "slots": 1}
    assert account.balance_nanos == USD


@REAL_CONNECTIONS
@pytest.mark.parametrize("by", ["service", "task"])
def test_a_heartbeat_arriving_while_the_sweep_holds_its_locks_is_refused(by, own_connection,
                                                                         eager_tasks):
    # Given a hold leased until T0 + 120 s, and the sweep at 121 s on its own connection,
    # not yet committed.
    customer = customer_create(now=T0 - timedelta(days=1))
    hold = authorize(customer, now=T0)
    sweep = own_connection(sweep_at(T0 + LEASE + timedelta(seconds=1), customer.account_id,
                                    by=by))
    assert sweep.called.wait(30)
    assert not isinstance(sweep.result, BaseException), sweep.result

    # When a heartbeat sent at 100 s reaches the database then, and the sweep commits
    # while it waits.
    beat = own_connection(lambda: hold_heartbeat(
        hold_id=hold.hold_id, now=T0 + timedelta(seconds=100)))
    waits_for_a_lock(beat)
    sweep.commit()
    beat.commit()

    # Then the heartbeat is refused (409 hold_closed), and the slot and money were freed
    # once, without a charge.
    assert isinstance(beat.result, ApplicationError), beat.result
    assert (beat.result.status, beat.result.code, beat.result.extra) == (
        409, "hold_closed", {"hold_status": "expired"})
    if by == "service":
        assert sweep.result == 1
    stored = Hold.objects.get(id=hold.hold_id)
    assert (stored.status, stored.lease_expires_at) == (Hold.Status.EXPIRED, T0 + LEASE)
    account = customer.account()
    assert (account.held_nanos, account.slots_in_use, account.balance_nanos) == (0, 0, USD)
    assert open_holds(customer.account_id) == {"n": 0, "held": 0, "slots": 0}
    assert not UsageRecord.objects.exists()


# --- Expired credit -------------------------------------------------------------------------


@pytest.mark.figure(8, tried="authorize 1 microsecond before and at the only lot's "
                    "expiry", counts="admitted before, 402 at the expiry, expiry recorded once")
def test_expired_credit_is_never_spendable_even_before_the_expiry_task_runs():
    # Given an account whose only credit is its $1 free grant, expiring at T.
    expiry = T0
    customer = customer_create(now=expiry - timedelta(days=28))
    (lot,) = CreditLot.objects.filter(account_id=customer.account_id)
    assert (lot.expires_at, lot.remaining_nanos) == (expiry, USD)

    # When a run is authorized a microsecond before T, it is admitted.
    early = authorize(customer, now=expiry - MICROSECOND, request_id="early")
    hold_release(hold_id=early.hold_id, now=expiry - MICROSECOND)

    # When one is authorized at T, with the expiry not yet recorded by any task.
    lot.refresh_from_db()
    assert lot.expired_at is None and customer.account().balance_nanos == USD
    error = refusal(lambda: authorize(customer, now=expiry, request_id="at-expiry"))

    # Then it is refused for lack of credit, and the expiry got recorded on the way.
    assert (error.status, error.code) == (402, "insufficient_credits")
    assert error.extra["available_usd"] == "0.000000000"
    assert not Hold.objects.filter(request_id="at-expiry").exists()
    lot.refresh_from_db()
    assert (lot.remaining_nanos, lot.expired_at) == (0, expiry)
    assert customer.account().balance_nanos == 0
    assert LedgerTransaction.objects.filter(account_id=customer.account_id,
                                            kind="expiry").count() == 1


@pytest.mark.figure(8, tried="a hold that straddles its lot's expiry settles after it",
                    counts="only the live lot pays, the rest owed, expired credit untouched")
def test_a_settle_after_the_credit_expired_cannot_spend_it(anon_api):
    # Given a hold authorized just before the account's only lot expired at T, and a
    # second lot, granted later, expiring after T.
    expiry = T0
    customer = customer_create(now=expiry - timedelta(days=28))
    hold = authorize(customer, now=expiry - MICROSECOND, seconds=3600)
    later, _ = credit_grant(account_id=customer.account_id, amount_nanos=100_000_000,
                            reason="goodwill", now=expiry - MICROSECOND,
                            expires_at=expiry + timedelta(days=7))

    # When the run settles after T for more than the live credit ($0.10): $0.2592.
    result = settlement_output(hold_settle(
        hold_id=hold.hold_id, now=expiry + timedelta(seconds=1),
        usage=Usage(inference_seconds=3600)))

    # Then only the live lot paid; the rest is owed, and the expired $1 was not touched.
    assert result["charged_usd"] == "0.259200000"
    assert result["unpaid_usd"] == "0.159200000"
    assert result["balance_usd"] == "0.000000000"
    assert CreditLot.objects.get(id=later.id).remaining_nanos == 0
    (expired,) = CreditLot.objects.filter(account_id=customer.account_id,
                                          expires_at=expiry)
    assert expired.remaining_nanos == USD  # recorded as expired by the next bring-current
    account = customer.account()
    assert account.receivable_nanos == 159_200_000

    # And the customer sees no balance at T (the read brings the account current).
    with time_machine.travel(expiry + timedelta(seconds=2), tick=False):
        response = anon_api.get("/api/v1/credits", HTTP_AUTHORIZATION=customer.key)
    assert response.status_code == 200, response.json()
    assert (response.json()["balance_usd"], response.json()["available_usd"]) == (
        "0.000000000", "0.000000000")
    expired.refresh_from_db()
    assert (expired.remaining_nanos, expired.expired_at) == (0, expiry + timedelta(seconds=2))


def test_a_replayed_authorize_reports_no_expired_credit():
    # Given a hold authorized a microsecond before the account's only lot expired at T.
    expiry = T0
    customer = customer_create(now=expiry - timedelta(days=28))
    first = authorize(customer, now=expiry - MICROSECOND, request_id="same-run")

    # When the gateway retries the same request a second after T.
    again = authorize(customer, now=expiry + timedelta(seconds=1), request_id="same-run")

    # Then it gets the same hold, and a balance without the expired credit.
    assert (again.hold_id, again.replayed) == (first.hold_id, True)
    assert again.balance_nanos == 0
    assert again.held_nanos == again.reserved_nanos == first.reserved_nanos
    assert Hold.objects.filter(account_id=customer.account_id).count() == 1
