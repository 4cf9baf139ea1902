"""Group commit for the run path: authorizes (and settles) that arrive while one is in
flight are applied together in the next statement: one round trip, one transaction, one
commit (one WAL flush) for all of them, where each alone pays its own. On a hot account
every request holds the account's row lock through its own commit, so alone they queue
on the WAL flush; in a batch they share one.

The classic leader/follower scheme, per process, with no thread of its own and no timer:
a request thread queues its item; if no batch is in flight it leads: it takes everything
queued at that moment, runs it as one statement on its own database connection, and
hands each waiter its own answer; the first of the items queued meanwhile then leads the
next batch. A batch of one is today's single statement, so an idle server pays nothing.
The batches form among the threads of one server process.

Each item is still decided alone, against its own account, key and request id (the batch
functions in metering/group_commit_sql.py apply the single statements' own text item by
item). A batch statement that fails (a deadlock, one item's error) is rolled back whole,
and every one of its items then runs its single statement in its own thread: an answer
is never wrong, at worst slower. No batching inside a caller's transaction (its writes
must stay its own), on SQLite, or with RUN_PATH_GROUP_COMMIT off."""

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence

from django.conf import settings
from django.db import connection

from config.metrics import run_path_batch_observe
from metering import sql

logger = logging.getLogger(__name__)

# A batch answer that says: run this item's single statement yourself.
RUN_ALONE = object()


class _Waiter:
    __slots__ = ("answer", "params", "promoted", "ready")

    def __init__(self, params: dict) -> None:
        self.params = params
        self.answer: object = RUN_ALONE
        self.promoted = False  # woken to lead the next batch, not with an answer
        self.ready = threading.Event()


class GroupCommit:
    """One call's batcher. `run_one(params)` is the single statement (its answer, or what
    it raises, goes to the caller as it is); `run_batch(list of params)` the batch
    statement, one answer per item in order (RUN_ALONE for an item that must run alone)."""

    def __init__(self, *, call: str, run_one: Callable[[dict], object],
                 run_batch: Callable[[Sequence[dict]], list]) -> None:
        self.call = call
        self._run_one = run_one
        self._run_batch = run_batch
        self._lock = threading.Lock()
        self._queue: list[_Waiter] = []
        self._leading = False
        self.batch_sizes: Counter[int] = Counter()  # size: batches run (this process)
        self.batches_failed = 0

    def submit(self, params: dict) -> object:
        waiter = _Waiter(params)
        with self._lock:
            self._queue.append(waiter)
            follow = self._leading
            self._leading = True
        if follow:
            waiter.ready.wait()
            if not waiter.promoted:
                return self._answer(waiter)
        return self._lead(waiter)

    def _lead(self, own: _Waiter) -> object:
        with self._lock:
            batch, self._queue = self._queue, []
        self.batch_sizes[len(batch)] += 1
        started = time.perf_counter()
        if len(batch) == 1:
            try:
                return self._run_one(own.params)
            finally:
                self._observe(size=1, started=started)
                self._hand_over()
        answers = None
        try:
            answers = self._run_batch([waiter.params for waiter in batch])
            if len(answers) != len(batch):
                raise RuntimeError(f"{len(answers)} answers for {len(batch)} items")
        except Exception:
            answers = None
            self.batches_failed += 1
            logger.warning("run path %s batch of %d failed; its items run alone",
                           self.call, len(batch), exc_info=True)
        finally:
            self._observe(size=len(batch), started=started)
            # The next batch first (its statement can be on its way while this one's
            # callers take their answers), then this one's waiters, whatever happened.
            self._hand_over()
            for index, waiter in enumerate(batch):
                waiter.answer = RUN_ALONE if answers is None else answers[index]
                if waiter is not own:
                    waiter.ready.set()
        return self._answer(own)

    def _observe(self, *, size: int, started: float) -> None:
        run_path_batch_observe(call=self.call, size=size,
                               seconds=time.perf_counter() - started)

    def _hand_over(self) -> None:
        with self._lock:
            if self._queue:
                successor = self._queue[0]
                successor.promoted = True
                successor.ready.set()
            else:
                self._leading = False

    def _answer(self, waiter: _Waiter) -> object:
        if waiter.answer is RUN_ALONE:
            return self._run_one(waiter.params)
        return waiter.answer


def group_commit_applies() -> bool:
    return (settings.RUN_PATH_GROUP_COMMIT and sql.is_postgresql()
            and not connection.in_atomic_block)


def _settle_one(params: dict) -> tuple:
    return sql.settle_postgresql(**params)


AUTHORIZE = GroupCommit(call="authorize", run_one=sql.authorize_reserve,
                        run_batch=sql.authorize_reserve_batch)
SETTLE = GroupCommit(call="settle", run_one=_settle_one, run_batch=sql.settle_postgresql_batch)


def authorize_reserve(params: dict) -> tuple | None:
    """sql.authorize_reserve, in a batch with others when some are in flight. None when a
    rule failed or the request_id has a hold already (the slow path answers both)."""
    if not group_commit_applies():
        return sql.authorize_reserve(params)
    return AUTHORIZE.submit(params)


def settle_postgresql(**params) -> tuple:
    """sql.settle_postgresql, in a batch with others when some are in flight."""
    if not group_commit_applies():
        return sql.settle_postgresql(**params)
    return SETTLE.submit(params)
