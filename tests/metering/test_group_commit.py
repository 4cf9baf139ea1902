"""Group commit (metering/group_commit.py) under real concurrency: threads, each on its own
PostgreSQL connection, whose authorizes and settles share batch statements. Every answer
must be the one the request would have had alone."""

import random
import threading
from collections import Counter, defaultdict

import pytest
from django.db import connection, transaction

from accounts.models import ApiKey
from accounts.services import api_key_revoke
from config.api import ApplicationError
from metering import group_commit, group_commit_sql
from metering.authorize import hold_authorize
from metering.models import Hold, UsageRecord
from metering.selectors import books_discrepancies
from metering.settle import Usage, hold_settle
from ratelimits.models import KeySpend
from tests.runpath import (
    MODEL_7B,
    RATE_7B,
    balance_set,
    customer_create,
    open_holds,
    run_in_threads,
)
from tests.support import scrape, value

pytestmark = [pytest.mark.django_db(transaction=True, serialized_rollback=True),
              pytest.mark.usefixtures("catalog")]

SECONDS = 30
RESERVE = SECONDS * RATE_7B
THREADS = 16


def authorize_answer(customer, request_id: str):
    """(hold id, reserved) for an admitted request, else the refusal's code."""
    try:
        authorization = hold_authorize(api_key=customer.key, model_id=MODEL_7B,
                                       request_id=request_id, estimate_seconds=SECONDS)
    except ApplicationError as exc:
        return exc.code
    return authorization.hold_id, authorization.reserved_nanos


def settle_answer(hold_id, seconds: int):
    try:
        settlement = hold_settle(hold_id=hold_id, usage=Usage(inference_seconds=seconds))
    except ApplicationError as exc:
        return exc.code
    return settlement


def in_threads(work: list, answer) -> list:
    """Every item of `work` answered by `answer(item)`, shared out among THREADS threads
    (each takes the next item as soon as it is done): answers in `work`'s order."""
    answers: list = [None] * len(work)
    taken = iter(range(len(work)))
    lock = threading.Lock()

    def thread_main(_):
        while True:
            with lock:
                index = next(taken, None)
            if index is None:
                return
            answers[index] = ("answered", answer(work[index]))

    run_in_threads(THREADS, thread_main)
    assert all(a is not None for a in answers), "a request was never answered"
    return [a[1] for a in answers]


def batches_since(before: Counter, batcher) -> Counter:
    return batcher.batch_sizes - before


def test_concurrent_authorizes_and_settles_in_batches_each_get_their_own_answer():
    # Given five accounts, each refusing in its own way once the race is on:
    rich = customer_create(purchased_usd=1_000)  # 400 slots, credit for every request
    short = customer_create(purchased_usd=1_000)  # credit for exactly 7 reservations
    balance_set(account_id=short.account_id, balance_nanos=7 * RESERVE + RESERVE - 1)
    one_slot = customer_create()  # the free tier: one concurrent slot
    revoked = customer_create(purchased_usd=1_000)  # its key revoked (known to the cache)
    limited = customer_create(purchased_usd=1_000)  # its key's limit covers 5 reservations
    ApiKey.objects.filter(id=limited.key_id).update(spend_limit_nanos=5 * RESERVE + RESERVE - 1,
                                                    spend_limit_period="month")
    assert authorize_answer(revoked, "warm-the-key-cache")[1] == RESERVE
    api_key_revoke(account_id=revoked.account_id, key_id=revoked.key_id)
    customers = {"rich": rich, "short": short, "one_slot": one_slot, "revoked": revoked,
                 "limited": limited}
    before = {name: (c.account().balance_nanos, c.account().held_nanos)
              for name, c in customers.items()}
    # ...and 30 request ids per account, a third of them sent three times (retries).
    work = []
    for name in customers:
        for n in range(30):
            work += [(name, f"{name}-{n}")] * (3 if n % 3 == 0 else 1)
    random.Random(7).shuffle(work)
    authorize_batches = Counter(group_commit.AUTHORIZE.batch_sizes)
    failed_before = (group_commit.AUTHORIZE.batches_failed, group_commit.SETTLE.batches_failed)

    # When 16 threads send them all, as fast as they are answered.
    answers = in_threads(work, lambda item: authorize_answer(customers[item[0]], item[1]))

    # Then some authorizes shared a statement, and no batch failed (none ran alone).
    batches = batches_since(authorize_batches, group_commit.AUTHORIZE)
    assert any(size > 1 for size in batches), batches
    assert group_commit.AUTHORIZE.batches_failed == failed_before[0]
    # And every request was answered once, and every retry of a request id got the same
    # answer as its first: the same hold, or the same refusal.
    assert len(answers) == len(work)
    by_request = defaultdict(set)
    for (name, request_id), answer in zip(work, answers, strict=True):
        by_request[name, request_id].add(answer)
    assert all(len(seen) == 1 for seen in by_request.values()), by_request
    admitted = defaultdict(dict)
    refusals = defaultdict(Counter)
    for (name, request_id), (answer,) in by_request.items():
        if isinstance(answer, tuple):
            assert answer[1] == RESERVE
            admitted[name][request_id] = answer[0]
        else:
            refusals[name][answer] += 1
    # And each account admitted exactly what its rules allow, refusing the rest by name.
    assert len(admitted["rich"]) == 30 and not refusals["rich"]
    assert len(admitted["short"]) == 7
    assert refusals["short"] == {"insufficient_credits": 23}
    assert len(admitted["one_slot"]) == 1
    assert refusals["one_slot"] == {"concurrency_limit": 29}
    assert not admitted["revoked"] and refusals["revoked"] == {"invalid_api_key": 30}
    assert len(admitted["limited"]) == 5
    assert refusals["limited"] == {"key_spend_limit": 25}
    # And the money and slots held are exactly the admitted holds', nothing else moved.
    for name, customer in customers.items():
        holds = Hold.objects.filter(account_id=customer.account_id,
                                    request_id__startswith=f"{name}-")
        assert sorted(holds.values_list("id", flat=True)) == sorted(admitted[name].values())
        account = customer.account()
        warm = RESERVE if name == "revoked" else 0  # the hold taken before the race
        assert account.held_nanos == before[name][1] + len(admitted[name]) * RESERVE
        assert account.held_nanos == len(admitted[name]) * RESERVE + warm
        assert account.slots_in_use == len(admitted[name]) + (1 if warm else 0)
        assert open_holds(customer.account_id)["held"] == account.held_nanos
        assert account.balance_nanos == before[name][0]
    assert KeySpend.objects.get(api_key_id=limited.key_id).spent_nanos == 5 * RESERVE
    assert books_discrepancies() == []

    # When every admitted hold is settled by two racing callers (each run billed its own
    # number of seconds).
    holds = [hold_id for name in admitted for hold_id in admitted[name].values()]
    seconds = {hold_id: 1 + i % 20 for i, hold_id in enumerate(holds)}
    settle_work = holds * 2
    random.Random(8).shuffle(settle_work)
    settle_batches = Counter(group_commit.SETTLE.batch_sizes)
    settlements = in_threads(settle_work,
                             lambda hold_id: settle_answer(hold_id, seconds[hold_id]))

    # Then some settles shared a statement, and both callers of a hold got its one answer.
    assert any(size > 1 for size in batches_since(settle_batches, group_commit.SETTLE))
    assert group_commit.SETTLE.batches_failed == failed_before[1]
    by_hold = defaultdict(set)
    for hold_id, settlement in zip(settle_work, settlements, strict=True):
        by_hold[hold_id].add(settlement)
    assert all(len(seen) == 1 for seen in by_hold.values())
    for hold_id, (settlement,) in by_hold.items():
        assert settlement.charged_nanos == seconds[hold_id] * RATE_7B
        assert settlement.unpaid_nanos == 0
    # And each account paid exactly its runs, once; nothing is held any more.
    assert UsageRecord.objects.filter(hold_id__in=holds).count() == len(holds)
    for name, customer in customers.items():
        account = customer.account()
        charged = sum(seconds[h] * RATE_7B for h in admitted[name].values())
        assert account.balance_nanos == before[name][0] - charged
        warm = RESERVE if name == "revoked" else 0
        assert (account.held_nanos, account.slots_in_use) == (warm, 1 if warm else 0)
    limited_charged = sum(seconds[h] * RATE_7B for h in admitted["limited"].values())
    assert KeySpend.objects.get(api_key_id=limited.key_id).spent_nanos == limited_charged
    assert books_discrepancies() == []


def _function_header(create: str) -> str:
    return create[:create.index("LANGUAGE plpgsql")]


# A batch function that writes, then fails as a deadlock would: its writes must be rolled
# back, and every item answered by its own single statement.
FAILING_AUTHORIZE = _function_header(group_commit_sql.AUTHORIZE_CREATE) + """
LANGUAGE plpgsql AS $fn$
BEGIN
    UPDATE accounts_account SET held_nanos = held_nanos + 1 WHERE id = ANY (p_account_id);
    RAISE EXCEPTION 'batch refused for the test' USING ERRCODE = 'deadlock_detected';
END
$fn$;
"""
FAILING_SETTLE = _function_header(group_commit_sql.SETTLE_CREATE) + """
LANGUAGE plpgsql AS $fn$
BEGIN
    -- Every item really settled (charged, recorded), then the whole batch undone.
    PERFORM metering_settle(p_hold_id[i], p_now[i], p_late_window, p_inference_seconds[i],
        p_load_seconds[i], p_input_tokens[i], p_output_tokens[i], p_provider_cost_nanos[i],
        p_far_future, p_unit[i], p_units[i])
      FROM generate_subscripts(p_hold_id, 1) AS i;
    RAISE EXCEPTION 'batch refused for the test' USING ERRCODE = 'deadlock_detected';
END
$fn$;
"""


@pytest.fixture
def failing_batches():
    """The batch functions replaced by failing ones for the test, then restored."""
    with connection.cursor() as cursor:
        cursor.execute(FAILING_AUTHORIZE)
        cursor.execute(FAILING_SETTLE)
    try:
        yield
    finally:
        with connection.cursor() as cursor:
            cursor.execute(group_commit_sql.AUTHORIZE_CREATE)
            cursor.execute(group_commit_sql.SETTLE_CREATE)


@pytest.mark.usefixtures("failing_batches")
def test_a_failing_batch_is_undone_and_each_item_answered_alone():
    # Given an account with credit for exactly 10 reservations and slots for all.
    customer = customer_create(purchased_usd=1_000)
    balance = 10 * RESERVE + RESERVE - 1
    balance_set(account_id=customer.account_id, balance_nanos=balance)
    work = [f"req-{n}" for n in range(40)] + [f"req-{n}" for n in range(0, 40, 4)]
    random.Random(3).shuffle(work)
    failed_before = group_commit.AUTHORIZE.batches_failed
    batches_before = Counter(group_commit.AUTHORIZE.batch_sizes)

    # When 16 threads authorize them, every batch of more than one failing.
    answers = in_threads(work, lambda request_id: authorize_answer(customer, request_id))

    # Then batches were tried and failed, and every request still got the right answer:
    # exactly 10 admitted, retries the same as their first, the rest refused by name.
    assert any(size > 1 for size in batches_since(batches_before, group_commit.AUTHORIZE))
    assert group_commit.AUTHORIZE.batches_failed > failed_before
    by_request = defaultdict(set)
    for request_id, answer in zip(work, answers, strict=True):
        by_request[request_id].add(answer)
    assert all(len(seen) == 1 for seen in by_request.values())
    admitted = {r: a for r, (a,) in by_request.items() if isinstance(a, tuple)}
    refused = Counter(a for (a,) in by_request.values() if not isinstance(a, tuple))
    assert len(admitted) == 10 and refused == {"insufficient_credits": 30}
    # And the failed batches' writes are gone: the account holds exactly the 10 holds.
    account = customer.account()
    assert (account.held_nanos, account.slots_in_use) == (10 * RESERVE, 10)
    assert account.balance_nanos == balance
    assert sorted(Hold.objects.filter(account_id=customer.account_id)
                  .values_list("id", flat=True)) == sorted(a[0] for a in admitted.values())

    # When the 10 holds are settled, each by three racing callers, batches failing too.
    settle_failed_before = group_commit.SETTLE.batches_failed
    holds = [answer[0] for answer in admitted.values()]
    settle_work = holds * 3
    random.Random(4).shuffle(settle_work)
    settlements = in_threads(settle_work, lambda hold_id: settle_answer(hold_id, 10))

    # Then every caller got its hold's one settlement, and each run was charged once.
    assert group_commit.SETTLE.batches_failed > settle_failed_before
    by_hold = defaultdict(set)
    for hold_id, settlement in zip(settle_work, settlements, strict=True):
        by_hold[hold_id].add(settlement)
    assert all(len(seen) == 1 and next(iter(seen)).charged_nanos == 10 * RATE_7B
               for seen in by_hold.values())
    account.refresh_from_db()
    assert account.balance_nanos == balance - 10 * 10 * RATE_7B
    assert (account.held_nanos, account.slots_in_use) == (0, 0)
    assert UsageRecord.objects.filter(account_id=customer.account_id).count() == 10
    assert books_discrepancies() == []


def test_no_batching_inside_a_callers_transaction_or_when_turned_off(settings):
    # Given an account with credit.
    customer = customer_create(purchased_usd=1_000)
    batches_before = Counter(group_commit.AUTHORIZE.batch_sizes)

    # When authorizes run inside a caller's transaction, and with group commit off.
    with transaction.atomic():
        inside = authorize_answer(customer, "in-a-transaction")
    settings.RUN_PATH_GROUP_COMMIT = False
    answers = run_in_threads(8, lambda i: authorize_answer(customer, f"off-{i}"))

    # Then each was admitted by its own single statement; the batcher never ran.
    assert isinstance(inside, tuple)
    assert all(isinstance(answer, tuple) for answer in answers)
    assert group_commit.AUTHORIZE.batch_sizes == batches_before
    assert customer.account().held_nanos == 9 * RESERVE


def test_each_statement_is_counted_with_its_items_and_timed(client):
    # Given an account with credit, and the run path's metrics so far.
    customer = customer_create(purchased_usd=1_000)
    before = scrape(client)
    batches_before = Counter(group_commit.AUTHORIZE.batch_sizes)

    # When 16 threads authorize 40 runs.
    answers = in_threads(range(40), lambda n: authorize_answer(customer, f"timed-{n}"))

    # Then every run was admitted, and the metrics count each statement once, with the
    # items it carried and the time its thread waited for it.
    assert all(isinstance(answer, tuple) for answer in answers)
    batches = batches_since(batches_before, group_commit.AUTHORIZE)
    after = scrape(client)

    def delta(name):
        return value(after, name, call="authorize") - value(before, name, call="authorize")

    statements = sum(batches.values())
    assert delta("billing_run_path_batch_size_count") == statements
    assert delta("billing_run_path_batch_size_sum") == 40
    assert delta("billing_run_path_statement_seconds_count") == statements
    assert 0 < delta("billing_run_path_statement_seconds_sum") < 60
    # And the settles' series did not move.
    assert value(after, "billing_run_path_statement_seconds_count", call="settle") == \
        value(before, "billing_run_path_statement_seconds_count", call="settle")
