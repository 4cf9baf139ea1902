"""Prometheus metrics, served at GET /metrics (with a service token).

Observed where calls come in, not inside services: the run path's base view (latency and
outcome of each call), the Stripe webhook view, and Celery's task signals. The run path
pays one histogram observe and one counter increment per call, no query.

Under the production server every worker process keeps its own numbers: with
PROMETHEUS_MULTIPROC_DIR set (deploy/serve.py sets it), prometheus_client writes them to
files there and /metrics adds up all processes' files, so any worker answers for the
whole server. Celery workers on the same host that share the directory are counted too."""

import json
import os
import time
from functools import wraps

from celery import signals
from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)

# Buckets around the run path's figures (about 1 ms at p50, a few ms at p99).
_LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1,
                    0.25, 0.5, 1.0, 2.5)

RUN_PATH_SECONDS = Histogram(
    "billing_run_path_seconds", "Time to answer a run-path call, by call.",
    ["call"], buckets=_LATENCY_BUCKETS)
RUN_PATH_OUTCOMES = Counter(
    "billing_run_path_outcomes", "Run-path answers by call and outcome: ok or the error "
    "code (authorize's decisions: ok, insufficient_credits, concurrency_limit, ...).",
    ["call", "outcome"])
RUN_PATH_BATCH_SIZE = Histogram(
    "billing_run_path_batch_size", "Items per run-path statement under group commit "
    "(metering/group_commit.py), by call: 1 is a call alone.", ["call"],
    buckets=(1, 2, 3, 4, 6, 8, 12, 16, 32))
RUN_PATH_STATEMENT_SECONDS = Histogram(
    "billing_run_path_statement_seconds", "Wall time of one run-path statement under group "
    "commit, by call, as its request thread sees it: the round trip to PostgreSQL with its "
    "lock waits and commit, and the wait until the thread runs again. Far above the "
    "database's own time: the server's threads wait for a CPU or the GIL.", ["call"],
    buckets=(.0005, .001, .002, .005, .01, .02, .05, .1, .25, 1))
SETTLE_CHARGES = Counter(
    "billing_settle_charges", "Settle answers that charged (a repeated settle of the same "
    "hold answers, and counts, again).")
SETTLE_CHARGED_USD = Counter(
    "billing_settle_charged_usd", "Dollars charged by settle answers.")
AUTO_RELOADS = Counter(
    "billing_auto_reloads", "Auto-reload attempts by outcome (the payment's status, "
    "skipped, retry or error).", ["outcome"])
HOLDS_EXPIRED = Counter(
    "billing_holds_expired", "Holds freed by the lease sweep (no settle, release or "
    "heartbeat before the lease ended).")
WEBHOOK_EVENTS = Counter(
    "billing_stripe_webhook_events", "Stripe webhook deliveries by event type and result "
    "(processed, ignored, refused, failed).", ["type", "result"])
CELERY_TASKS = Counter(
    "billing_celery_tasks", "Celery task runs by task and outcome (success, failure, "
    "retry, rejected, revoked).", ["task", "outcome"])

# The run path's views by class name: their label. Another view on the lean base gets its
# class name, lower case, without "api".
_CALL_NAMES = {"HoldAuthorizeApi": "authorize", "HoldSettleApi": "settle",
               "HoldReleaseApi": "release", "HoldHeartbeatApi": "heartbeat"}


def run_path_call_name(view_class: type) -> str:
    name = view_class.__name__
    return _CALL_NAMES.get(name) or name.lower().removesuffix("api")


# (call, outcome) -> the two labelled children: labels() validates and looks them up under
# a lock on every call, which cost more than the observation itself.
_run_path_children: dict[tuple[str, str], tuple] = {}


def run_path_observe(*, call: str, started: float, outcome: str) -> None:
    elapsed = time.perf_counter() - started
    children = _run_path_children.get((call, outcome))
    if children is None:
        children = _run_path_children[call, outcome] = (
            RUN_PATH_SECONDS.labels(call), RUN_PATH_OUTCOMES.labels(call, outcome))
    children[0].observe(elapsed)
    children[1].inc()


_run_path_batch_children: dict[str, tuple] = {}


def run_path_batch_observe(*, call: str, size: int, seconds: float) -> None:
    children = _run_path_batch_children.get(call)
    if children is None:
        children = _run_path_batch_children[call] = (
            RUN_PATH_BATCH_SIZE.labels(call), RUN_PATH_STATEMENT_SECONDS.labels(call))
    children[0].observe(size)
    children[1].observe(seconds)


def settle_charge_observe(charged_nanos: int) -> None:
    if charged_nanos > 0:
        SETTLE_CHARGES.inc()
        SETTLE_CHARGED_USD.inc(charged_nanos / 10**9)


# --- Stripe webhooks --------------------------------------------------------------------------


def webhook_observed(view):
    """Counts each delivery by event type and result. The type is read from the body only
    once the view accepted the signature: an unsigned body cannot invent label values."""

    @wraps(view)
    def observed(request, *args, **kwargs):
        response = view(request, *args, **kwargs)
        event_type = "unverified"
        if response.status_code == 400:
            result = "refused"
        else:
            try:
                event_type = str(json.loads(request.body).get("type", "unknown"))[:100]
            except (ValueError, AttributeError):
                event_type = "unknown"
            if response.status_code != 200:
                result = "failed"
            else:
                try:
                    outcome = json.loads(response.content).get("outcome", "")
                except ValueError:
                    outcome = ""
                result = "ignored" if str(outcome).startswith("ignored") else "processed"
        WEBHOOK_EVENTS.labels(event_type, result).inc()
        return response

    return observed


# --- Celery ------------------------------------------------------------------------------------

_AUTO_RELOAD_TASK = "billing.tasks.auto_reload_for_crossing"
_HOLDS_EXPIRE_TASK = "metering.tasks.holds_expire_for_account"


def _task_name(sender) -> str:
    return getattr(sender, "name", None) or str(sender)


def task_success_observe(sender=None, result=None, **kwargs) -> None:
    name = _task_name(sender)
    CELERY_TASKS.labels(name, "success").inc()
    if name == _HOLDS_EXPIRE_TASK and isinstance(result, int):
        HOLDS_EXPIRED.inc(result)
    elif name == _AUTO_RELOAD_TASK:
        AUTO_RELOADS.labels(result if isinstance(result, str) else "skipped").inc()


def task_failure_observe(sender=None, **kwargs) -> None:
    name = _task_name(sender)
    CELERY_TASKS.labels(name, "failure").inc()
    if name == _AUTO_RELOAD_TASK:
        AUTO_RELOADS.labels("error").inc()


def task_retry_observe(sender=None, **kwargs) -> None:
    name = _task_name(sender)
    CELERY_TASKS.labels(name, "retry").inc()
    if name == _AUTO_RELOAD_TASK:
        AUTO_RELOADS.labels("retry").inc()


def task_rejected_observe(message=None, **kwargs) -> None:
    name = getattr(message, "headers", {}).get("task", "unknown") if message else "unknown"
    CELERY_TASKS.labels(name, "rejected").inc()


def task_revoked_observe(sender=None, **kwargs) -> None:
    CELERY_TASKS.labels(_task_name(sender), "revoked").inc()


def connect_celery_signals() -> None:
    signals.task_success.connect(task_success_observe, weak=False)
    signals.task_failure.connect(task_failure_observe, weak=False)
    signals.task_retry.connect(task_retry_observe, weak=False)
    signals.task_rejected.connect(task_rejected_observe, weak=False)
    signals.task_revoked.connect(task_revoked_observe, weak=False)


# --- Exposition --------------------------------------------------------------------------------


def metrics_text() -> bytes:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry)
    return generate_latest(REGISTRY)
