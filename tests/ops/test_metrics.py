"""GET /metrics: Prometheus text, behind the service token, with the numbers of the calls
that really happened."""

import json
import os
import signal
import time
import uuid
from datetime import timedelta

import pytest
import requests
import stripe
import time_machine
from django.utils import timezone

from billing.tasks import auto_reload_for_crossing
from metering.models import Hold
from metering.tasks import holds_expire_due, holds_expire_for_account
from tests.conftest import INTERNAL_TOKEN
from tests.ops.conftest import wait_for
from tests.runpath import MODEL_7B, authorize_body, balance_set, customer_create, usd
from tests.support import samples, scrape, value

pytestmark = pytest.mark.django_db

AUTH = {"HTTP_AUTHORIZATION": f"Bearer {INTERNAL_TOKEN}"}


def post(client, path: str, body: dict):
    return client.post(path, data=json.dumps(body), content_type="application/json", **AUTH)


def test_metrics_need_a_service_token(client, db):
    customer = customer_create()
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer wrong").status_code == 401
    assert client.get("/metrics",
                      HTTP_AUTHORIZATION=f"Bearer {customer.key}").status_code == 401
    assert client.post("/metrics", **AUTH).status_code == 405
    assert client.get("/metrics", **AUTH).status_code == 200


def test_run_path_calls_are_counted_by_outcome_and_timed(client, catalog):
    customer = customer_create()
    balance_set(account_id=customer.account_id, balance_nanos=usd(1))
    before = scrape(client)

    # Two runs authorized one after the other (the free tier runs one at a time): one
    # settled with a charge, one released after a heartbeat; a third refused meanwhile
    first = post(client, "/internal/v1/authorize", authorize_body(customer, MODEL_7B))
    assert first.status_code == 200
    settled = post(client, f"/internal/v1/holds/{first.json()['hold_id']}/settle",
                   {"inference_seconds": 10.2, "load_seconds": 3})
    assert settled.json()["charged_usd"] == "0.000792000"  # 11 s at $0.000072
    second = post(client, "/internal/v1/authorize", authorize_body(customer, MODEL_7B))
    assert second.status_code == 200
    assert post(client, "/internal/v1/authorize",
                authorize_body(customer, MODEL_7B)).status_code == 429
    assert post(client, f"/internal/v1/holds/{second.json()['hold_id']}/heartbeat",
                {}).status_code == 200
    assert post(client, f"/internal/v1/holds/{second.json()['hold_id']}/release",
                {}).status_code == 200
    # ...and three refusals: an unknown model, an unknown hold, a malformed body
    assert post(client, "/internal/v1/authorize",
                authorize_body(customer, "no/such-model")).status_code == 404
    assert post(client, f"/internal/v1/holds/{uuid.uuid4()}/settle",
                {"inference_seconds": 1}).status_code == 404
    assert post(client, "/internal/v1/authorize", {"api_key": 5}).status_code == 400

    after = scrape(client)

    def delta(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    outcomes = "billing_run_path_outcomes_total"
    assert delta(outcomes, call="authorize", outcome="ok") == 2
    assert delta(outcomes, call="authorize", outcome="concurrency_limit") == 1
    assert delta(outcomes, call="authorize", outcome="model_not_found") == 1
    assert delta(outcomes, call="authorize", outcome="invalid_request") == 1
    assert delta(outcomes, call="settle", outcome="ok") == 1
    assert delta(outcomes, call="settle", outcome="hold_not_found") == 1
    assert delta(outcomes, call="heartbeat", outcome="ok") == 1
    assert delta(outcomes, call="release", outcome="ok") == 1
    assert delta("billing_run_path_seconds_count", call="authorize") == 5
    assert delta("billing_run_path_seconds_count", call="settle") == 2
    assert delta("billing_run_path_seconds_bucket", call="authorize", le="+Inf") == 5
    assert delta("billing_run_path_seconds_sum", call="authorize") > 0
    assert delta("billing_settle_charges_total") == 1
    assert delta("billing_settle_charged_usd_total") == pytest.approx(0.000792)


def test_webhook_deliveries_are_counted_by_type_and_result(client, settings, db):
    settings.STRIPE_WEBHOOK_SECRET = "whsec_test_metrics_secret"
    body = json.dumps({"id": f"evt_{uuid.uuid4().hex}", "object": "event",
                       "type": "customer.created", "created": int(time.time()),
                       "data": {"object": {"id": "cus_x", "object": "customer"}}})
    signature = stripe.WebhookSignature.generate_signature_header(
        body, settings.STRIPE_WEBHOOK_SECRET)
    before = scrape(client)

    accepted = client.post("/stripe/webhook", data=body, content_type="application/json",
                           HTTP_STRIPE_SIGNATURE=signature)
    forged = client.post("/stripe/webhook", data=body.replace("customer.created", "x.y"),
                         content_type="application/json", HTTP_STRIPE_SIGNATURE=signature)
    assert accepted.status_code == 200, accepted.content
    assert forged.status_code == 400

    after = scrape(client)
    name = "billing_stripe_webhook_events_total"
    assert value(after, name, type="customer.created", result="ignored") - value(
        before, name, type="customer.created", result="ignored") == 1
    # A refused delivery never names a type it could have made up
    assert value(after, name, type="unverified", result="refused") - value(
        before, name, type="unverified", result="refused") == 1
    assert value(after, name, type="x.y", result="refused") == 0


def test_celery_outcomes_expired_holds_and_reloads_are_counted(client, catalog, eager_tasks):
    customer = customer_create()
    response = post(client, "/internal/v1/authorize", authorize_body(customer, MODEL_7B))
    assert response.status_code == 200
    before = scrape(client)

    # The sweep runs after the lease lapsed: one hold expired, two tasks succeeded
    with time_machine.travel(timezone.now() + timedelta(minutes=10)):
        holds_expire_due.delay()
    assert Hold.objects.get(id=response.json()["hold_id"]).status == Hold.Status.EXPIRED
    # A reload for a crossing that no longer exists does nothing; a task that fails counts
    auto_reload_for_crossing.delay(10**12)
    # (run as a worker runs it: the failure is recorded, not raised into the caller)
    failed = holds_expire_for_account.apply(args=["not-an-account-id"], throw=False)
    assert failed.failed()

    after = scrape(client)

    def delta(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    tasks = "billing_celery_tasks_total"
    assert delta("billing_holds_expired_total") == 1
    assert delta(tasks, task="metering.tasks.holds_expire_due", outcome="success") == 1
    assert delta(tasks, task="metering.tasks.holds_expire_for_account", outcome="success") == 1
    assert delta(tasks, task="metering.tasks.holds_expire_for_account", outcome="failure") == 1
    assert delta(tasks, task="billing.tasks.auto_reload_for_crossing", outcome="success") == 1
    assert delta("billing_auto_reloads_total", outcome="skipped") == 1


def test_metrics_add_up_every_worker_and_keep_a_dead_workers_numbers(production_server,
                                                                     tmp_path):
    # Given the service as production runs it, with two worker processes (on the test
    # database), its metrics files where the test can see which worker counted what
    from django.db import connection

    db = connection.settings_dict
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    server = production_server(
        DATABASE_URL=f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}",
        BILLING_INTERNAL_TOKENS=INTERNAL_TOKEN, PROMETHEUS_MULTIPROC_DIR=str(metrics_dir))
    headers = {"Authorization": f"Bearer {INTERNAL_TOKEN}", "Connection": "close"}

    def release() -> None:
        answer = requests.post(f"{server.url}/internal/v1/holds/{uuid.uuid4()}/release",
                               json={}, headers=headers, timeout=10)
        assert answer.status_code == 404

    def counted() -> float:
        text = requests.get(f"{server.url}/metrics", headers=headers, timeout=10).text
        return value(samples(text), "billing_run_path_outcomes_total", call="release",
                     outcome="hold_not_found")

    def counting_workers() -> set[int]:
        return {int(path.stem.rsplit("_", 1)[1]) for path in metrics_dir.glob("counter_*.db")}

    # When calls are answered, each on a new connection, until both workers have
    # answered some (a worker listens once it has loaded the service)
    calls = 0
    while counting_workers() != set(server.worker_pids()) or calls < 20:
        assert calls < 400, (counting_workers(), server.worker_pids())
        release()
        calls += 1
    # Then any worker's /metrics counts them all
    for _ in range(4):
        assert counted() == calls

    # When a worker that counted some dies (SIGKILL: it cleans nothing up)
    first_workers = server.worker_pids()
    os.kill(first_workers[0], signal.SIGKILL)
    # Then another takes its place, the server answers, and the dead worker's numbers
    # still count beside the new calls'
    wait_for(lambda: len(set(server.worker_pids()) - set(first_workers)) == 1, timeout=30,
             message="a new worker in the dead one's place")
    for _ in range(5):
        release()
    for _ in range(4):
        assert counted() == calls + 5
    assert server.process.poll() is None
