"""Key spend limits under real concurrency: threads, each on its own PostgreSQL
connection, released together by a barrier, against committed data."""

import random
import threading
from datetime import timedelta

import pytest
from django.utils import timezone

from accounts.models import ApiKey
from accounts.services import api_key_create
from config.api import ApplicationError
from metering.authorize import hold_authorize
from metering.holds import hold_release, holds_expire
from metering.key_limits import api_key_spend_limit_set, key_spend_summary
from metering.models import Hold
from metering.selectors import books_discrepancies
from metering.settle import Usage, hold_settle
from ratelimits.key_limits import period_start
from ratelimits.models import KeySpend
from tests.runpath import (
    CONCURRENT_CONNECTIONS,
    MODEL_7B,
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


def key_limit_set(customer, *, limit_nanos: int, period: str = "month") -> None:
    ApiKey.objects.filter(id=customer.key_id).update(spend_limit_nanos=limit_nanos,
                                                     spend_limit_period=period)


def counted_by_holds(key_id) -> int:
    """What the key's holds of this month add up to: open reservations plus charges."""
    start = period_start(period="month", now=timezone.now())
    total = 0
    for hold in Hold.objects.filter(api_key_id=key_id, spend_period_start=start):
        if hold.status == Hold.Status.OPEN:
            total += hold.reserved_nanos
        elif hold.status == Hold.Status.SETTLED:
            total += hold.charged_nanos
    return total


@pytest.mark.slow
@pytest.mark.parametrize("admitted", [37, 1, 150, 0])
def test_barrier_synchronised_authorizes_on_one_key_admit_exactly_the_covered_number(
        admitted):
    # Given a key whose remaining limit covers exactly `admitted` reservations (one
    # nano-dollar short of one more; part of the limit spent already), on an account
    # with slots and credit for every caller.
    callers = 200
    seconds = 60
    reserve = seconds * RATE_7B
    customer = customer_create(purchased_usd=1_000)
    balance_set(account_id=customer.account_id, balance_nanos=2_000 * USD)
    spent_before = 3 * reserve
    key_limit_set(customer, limit_nanos=spent_before + admitted * reserve + reserve - 1)
    for i in range(3):
        hold_authorize(api_key=customer.key, model_id=MODEL_7B, request_id=f"before-{i}",
                       estimate_seconds=seconds)
    held_before = customer.account().held_nanos

    # When 200 authorizes race on that key, every wave released together.
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

    # Then exactly `admitted` were admitted; every other caller got key_spend_limit.
    ok = [r for r in responses if r.status_code == 200]
    refused = [r for r in responses if r.status_code != 200]
    assert len(responses) == callers
    assert len(ok) == admitted
    assert {r.status_code for r in refused} == {402}
    for response in refused:
        body = response.json()
        assert (body["code"], body["error"], body["status"]) == (
            "key_spend_limit", "Payment Required", 402)
        assert body["limit_usd"] == f"{(spent_before + (admitted + 1) * reserve - 1) / USD:.9f}"
        assert body["resets_at"].endswith("T00:00:00Z")
    # And the key's counter, the account's held money and the holds all agree.
    spent = spent_before + admitted * reserve
    assert KeySpend.objects.get(api_key_id=customer.key_id).spent_nanos == spent
    assert counted_by_holds(customer.key_id) == spent
    assert customer.account().held_nanos == held_before + admitted * reserve
    assert open_holds(customer.account_id)["n"] == 3 + admitted
    assert key_spend_summary(account_id=customer.account_id,
                             key_id=customer.key_id).spent_nanos == spent
    assert books_discrepancies() == []


@pytest.mark.slow
def test_a_storm_of_authorize_settle_release_and_expiry_keeps_every_key_counter_exact(
        settings):
    # Given three keys with limits on one account (and one key without), and plenty of
    # credit and slots.
    customer = customer_create(purchased_usd=1_000)
    balance_set(account_id=customer.account_id, balance_nanos=5_000 * USD)
    keys = []
    for limit_usd in (1, 2, 5):
        api_key, secret = api_key_create(account_id=customer.account_id,
                                         name=f"limited-{limit_usd}",
                                         spend_limit_nanos=limit_usd * USD // 10,
                                         spend_limit_period="month")
        keys.append((api_key.id, secret))
    keys.append((customer.key_id, customer.key))
    threads = CONCURRENT_CONNECTIONS
    steps = 12

    # When the threads mix authorizes, settles (under, at and above the reservation),
    # releases and lease sweeps on those keys.
    def worker(i):
        rng = random.Random(i)
        mine = []
        outcomes = {"admitted": 0, "refused": 0}
        for step in range(steps):
            action = rng.random()
            if action < 0.5 or not mine:
                _key_id, secret = rng.choice(keys)
                try:
                    authorization = hold_authorize(
                        api_key=secret, model_id=MODEL_7B, request_id=f"storm-{i}-{step}",
                        estimate_seconds=rng.choice([5, 30, 60]))
                    mine.append(authorization.hold_id)
                    outcomes["admitted"] += 1
                except ApplicationError as error:
                    assert error.code in ("key_spend_limit", "concurrency_limit"), error.code
                    outcomes["refused"] += 1
            elif action < 0.8:
                hold_id = mine.pop(rng.randrange(len(mine)))
                try:
                    hold_settle(hold_id=hold_id, usage=Usage(
                        inference_seconds=rng.choice([0, 3, 30, 90])))
                except ApplicationError as error:
                    assert error.code == "hold_closed"
            elif action < 0.95:
                hold_id = mine.pop(rng.randrange(len(mine)))
                hold_release(hold_id=hold_id)
            else:
                # A lease sweep a little in the future: some holds lapse and give back.
                holds_expire(account_id=customer.account_id,
                             now=timezone.now() + timedelta(seconds=rng.choice([0, 200])))
        return outcomes

    results = run_in_threads(threads, worker)

    # Then every key's counter is what its holds add up to, the GET says the same, and
    # no key went over its limit except by the overrun of settles above reservations.
    assert sum(r["admitted"] for r in results) > 0
    for key_id, _ in keys[:3]:
        counter = KeySpend.objects.filter(api_key_id=key_id).values_list(
            "spent_nanos", flat=True).first() or 0
        assert counter == counted_by_holds(key_id)
        assert key_spend_summary(account_id=customer.account_id,
                                 key_id=key_id).spent_nanos == counter
        limit = ApiKey.objects.get(id=key_id).spend_limit_nanos
        overrun = sum(max(0, hold.charged_nanos - hold.reserved_nanos)
                      for hold in Hold.objects.filter(api_key_id=key_id,
                                                      status=Hold.Status.SETTLED))
        assert counter <= limit + overrun
    assert not Hold.objects.filter(api_key_id=customer.key_id,
                                   spend_period_start__isnull=False).exists()
    assert books_discrepancies() == []


@pytest.mark.slow
def test_limit_changes_racing_runs_leave_every_counter_equal_to_its_holds():
    # Given a key with a limit that runs admit and refuse in turn.
    customer = customer_create(purchased_usd=1_000)
    balance_set(account_id=customer.account_id, balance_nanos=1_000 * USD)
    api_key_spend_limit_set(account_id=customer.account_id, key_id=customer.key_id,
                            limit_nanos=40 * 30 * RATE_7B, period="month")
    threads = min(CONCURRENT_CONNECTIONS, 16)

    # When threads authorize and settle on it while one thread keeps changing its limit
    # and period (month, week, day, total, removed, set again).
    def worker(i):
        rng = random.Random(1000 + i)
        for step in range(15):
            if i == 0:
                period = rng.choice(["month", "week", "day", "total", None])
                api_key_spend_limit_set(
                    account_id=customer.account_id, key_id=customer.key_id,
                    limit_nanos=None if period is None else rng.choice([10, 40]) * 30 * RATE_7B,
                    **({} if period is None else {"period": period}))
                continue
            try:
                authorization = hold_authorize(api_key=customer.key, model_id=MODEL_7B,
                                               request_id=f"patch-race-{i}-{step}",
                                               estimate_seconds=30)
            except ApplicationError as error:
                assert error.code in ("key_spend_limit", "concurrency_limit"), error.code
                continue
            if rng.random() < 0.7:
                hold_settle(hold_id=authorization.hold_id,
                            usage=Usage(inference_seconds=rng.choice([10, 30, 45])))
            else:
                hold_release(hold_id=authorization.hold_id)

    run_in_threads(threads, worker)

    # Then every counter is what its holds reserve and were charged (ledger_check), and
    # after one last change the current period counts every run authorized in it.
    assert books_discrepancies() == []
    api_key_spend_limit_set(account_id=customer.account_id, key_id=customer.key_id,
                            limit_nanos=USD, period="total")
    total = KeySpend.objects.get(api_key_id=customer.key_id,
                                 period_start=period_start(period="total",
                                                           now=timezone.now()))
    settled = sum(hold.charged_nanos for hold in Hold.objects.filter(
        api_key_id=customer.key_id, status=Hold.Status.SETTLED))
    assert total.spent_nanos == settled
    assert books_discrepancies() == []
