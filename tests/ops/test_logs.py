"""Structured logs: JSON lines, the request id on every line of a request and of the tasks
it enqueues, every error line once, and no secret in any line."""

import io
import json
import logging
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import redis
from django.conf import settings as django_settings

from config.celery import app as celery_app
from config.logs import JsonFormatter, redact, request_id_var
from metering.tasks import holds_expire_for_account
from tests.conftest import INTERNAL_TOKEN
from tests.ops.conftest import wait_for
from tests.runpath import MODEL_7B, authorize_body, customer_create

STRIPE_SECRET = "sk_test_4eC39HqLyjWDarjtT1zdp7dcOpsSecret"
WEBHOOK_SECRET = "whsec_OpsTestSigningSecret0123456789"
CARD = "4242 4242 4242 4242"


@pytest.fixture
def log_lines():
    """Every line the service writes, as its handler formats it (config/logs.py)."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.addHandler(handler)

    def lines() -> list[dict]:
        return [json.loads(line) for line in stream.getvalue().splitlines()]

    lines.text = stream.getvalue
    yield lines
    root.removeHandler(handler)


def test_every_line_of_a_request_carries_its_request_id(client, db, log_lines):
    response = client.post(f"/internal/v1/holds/{uuid.uuid4()}/settle",
                           data=json.dumps({"inference_seconds": 1}),
                           content_type="application/json",
                           HTTP_AUTHORIZATION=f"Bearer {INTERNAL_TOKEN}",
                           HTTP_X_REQUEST_ID="gw-req-42")
    assert response.status_code == 404
    assert response["X-Request-Id"] == "gw-req-42"
    lines = log_lines()
    assert lines, "the 404 is logged"
    assert all(line["request_id"] == "gw-req-42" for line in lines), lines
    assert {"time", "level", "logger", "message"} <= set(lines[0])


def test_a_missing_or_unusable_request_id_is_replaced_by_one_of_ours(client, db):
    made = client.get("/readyz")["X-Request-Id"]
    assert len(made) == 32
    for unusable in ("has space", "x" * 200, "new\nline"):
        answered = client.get("/readyz", HTTP_X_REQUEST_ID=unusable)["X-Request-Id"]
        assert answered != unusable and len(answered) == 32


@pytest.mark.figure(12, tried="requests carrying keys, tokens, card data and signatures; "
                    "their log lines searched", counts="no secret in the log (and `make test` "
                    "audits the whole run's log after the table, tests/ops/log_audit.py)")
def test_requests_with_secrets_leave_none_in_the_log(client, db, catalog, settings, log_lines):
    settings.STRIPE_SECRET_KEY = STRIPE_SECRET
    settings.STRIPE_WEBHOOK_SECRET = WEBHOOK_SECRET
    customer = customer_create()
    logger = logging.getLogger("billing.test")

    # Calls that carry every kind of secret: a service token, a wrong one, a customer key
    # where a service token belongs, a key in a body, a forged webhook signature
    auth = {"HTTP_AUTHORIZATION": f"Bearer {INTERNAL_TOKEN}"}
    assert client.post("/internal/v1/authorize", data=json.dumps(authorize_body(customer)),
                       content_type="application/json", **auth).status_code in (200, 404)
    assert client.post("/internal/v1/authorize", data=json.dumps(authorize_body(customer)),
                       content_type="application/json",
                       HTTP_AUTHORIZATION=f"Bearer {customer.key}").status_code == 401
    body = authorize_body(customer, MODEL_7B)
    body["api_key"] = customer.key + "tampered"
    assert client.post("/internal/v1/authorize", data=json.dumps(body),
                       content_type="application/json", **auth).status_code == 401
    assert client.get(f"/api/v1/credits?key={customer.key}",
                      HTTP_AUTHORIZATION=f"Bearer {customer.key}").status_code == 200
    assert client.post("/stripe/webhook", data=b'{"type": "x"}',
                       content_type="application/json",
                       HTTP_STRIPE_SIGNATURE=f"t=1,v1={WEBHOOK_SECRET}").status_code == 400
    # ...and code that carelessly logs them, in messages, extras and tracebacks
    logger.warning("calling Stripe with %s for card %s", STRIPE_SECRET, CARD)
    logger.warning("gateway sent Authorization: Bearer %s", INTERNAL_TOKEN)
    logger.info("authorize body", extra={"body": {"api_key": customer.key}})
    try:
        raise RuntimeError(f"Stripe refused key {STRIPE_SECRET} (signing {WEBHOOK_SECRET})")
    except RuntimeError:
        logger.exception("payment failed for key %s", customer.key)

    text = log_lines.text()
    for secret in (INTERNAL_TOKEN, customer.key, customer.key[len("bk_") + 9:],
                   STRIPE_SECRET, WEBHOOK_SECRET, CARD, CARD.replace(" ", "")):
        assert secret not in text, f"{secret!r} leaked into the log"
    assert text.count("[redacted]") >= 6
    # What an operator needs stays: the key's public prefix, the error, the request ids
    assert customer.key[:len("bk_") + 8] + "_[redacted]" in text
    assert "RuntimeError" in text
    assert all("request_id" in line for line in log_lines() if line["logger"] == "django.request")


@pytest.mark.parametrize(("text", "expected"), [
    ("balance 26000000000 nanos", "balance 26000000000 nanos"),  # amounts are not cards
    ("charged 0.000792000 for 4000000000000002", "charged 0.000792000 for [card number]"),
    ("card 4000-0025-0000-3155 declined", "card [card number] declined"),
    ("order 1234567890123", "order 1234567890123"),  # not Luhn-valid
    ("sk_live_abcDEF123 and rk_test_XYZ", "sk_live_[redacted] and rk_test_[redacted]"),
    ("pi_123_secret_abcDEF", "pi_123_secret_[redacted]"),
    ('{"password": "hunter22"}', '{"password": "[redacted]"}'),
    ("key bk_AbCd1234_" + "x" * 43, "key bk_AbCd1234_[redacted]"),
])
def test_redaction(text, expected):
    assert redact(text) == expected


def test_an_error_line_is_written_once():
    """Django's default logging gives its `django` logger a console handler of its own
    (with DEBUG on) and also passes the line to the root's: every error line came out
    twice."""
    script = ("import django, logging; django.setup(); "
              "logging.getLogger('django.request').error('boom-once')")
    env = {**os.environ, "DJANGO_DEBUG": "1", "DJANGO_SETTINGS_MODULE": "config.settings"}
    env.pop("LOG_FILE", None)
    result = subprocess.run([sys.executable, "-c", script], cwd=django_settings.BASE_DIR,
                            env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    output = result.stdout + result.stderr
    assert output.count("boom-once") == 1, output
    line = json.loads(next(line for line in output.splitlines() if "boom-once" in line))
    assert line["level"] == "error" and line["logger"] == "django.request"


@pytest.fixture
def worker_logging_to(tmp_path, django_db_setup):
    from django.db import connection

    db = connection.settings_dict
    log_path = tmp_path / "worker.jsonl"
    name = f"ops-log-test-{uuid.uuid4().hex[:8]}@localhost"
    celery_app.control.purge()
    env = {**os.environ,
           "DATABASE_URL": f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}",
           "REDIS_URL": django_settings.REDIS_URL, "LOG_FILE": str(log_path),
           "DATABASE_CONN_MAX_AGE": "0"}
    celery = Path(sys.executable).with_name("celery")
    process = subprocess.Popen(
        [str(celery), "-A", "config", "worker", "--pool", "solo", "--hostname", name,
         "--without-gossip", "--without-mingle"], cwd=django_settings.BASE_DIR, env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: process.poll() is not None or celery_app.control.ping(
            destination=[name], timeout=0.5), timeout=60, message="the worker to start")
        assert process.poll() is None, log_path.read_text() if log_path.exists() else ""
        yield log_path
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_a_task_enqueued_by_a_request_logs_with_that_request_id(worker_logging_to):
    # Given a request being served (the middleware has set its id)
    token = request_id_var.set("gw-req-task-7")
    try:
        # When it enqueues a task (here, a sweep of an account that does not exist)
        result = holds_expire_for_account.delay(str(uuid.uuid4()))
    finally:
        request_id_var.reset(token)
    # Then the message carries the id, and every line the worker writes for the task has it
    broker = redis.Redis.from_url(django_settings.REDIS_URL)
    assert broker is not None

    def task_lines():
        if not worker_logging_to.exists():
            return []
        lines = [json.loads(line) for line in worker_logging_to.read_text().splitlines()]
        return [line for line in lines if line.get("task_id") == result.id]

    lines = wait_for(lambda: [ln for ln in task_lines() if "raised" in ln["message"]
                              or "succeeded" in ln["message"]] and task_lines(),
                     timeout=60, message="the worker to run the task")
    assert lines
    assert all(line["request_id"] == "gw-req-task-7" for line in lines), lines
    assert all(line["task"] == "metering.tasks.holds_expire_for_account" for line in lines)


@pytest.mark.figure(12, tried="the full run's log audit on a planted leak and a clean log",
                    counts="the leak found, the clean log passed")
def test_the_run_log_audit_finds_a_leak_and_passes_a_clean_log(tmp_path):
    from tests.ops.log_audit import audit

    clean = tmp_path / "clean.jsonl"
    clean.write_text(redact(f'{{"message": "key bk_AbCd1234_{"x" * 43} and {INTERNAL_TOKEN}"}}')
                     + "\n")
    leaked = tmp_path / "leaked.jsonl"
    leaked.write_text(f'{{"message": "ok"}}\n{{"message": "Bearer {INTERNAL_TOKEN}"}}\n'
                      f'{{"message": "bk_AbCd1234_{"x" * 43}"}}\n')
    assert audit(clean) == []
    problems = audit(leaked)
    assert any("leaked.jsonl:2: service token" in p for p in problems), problems
    assert any("leaked.jsonl:3: unredacted customer API key" in p for p in problems), problems
    assert audit(tmp_path / "missing.jsonl")
