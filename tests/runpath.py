"""Shared set-up for the run path's tests (authorize, settle, release, heartbeat).

Plain functions that build a customer the way the platform does (through the services),
plus the fixtures the run-path test packages pull into their conftest."""

import itertools
import os
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from django.core.cache import cache
from django.db import connection, connections
from django.db.models import Count, Sum
from rest_framework.test import APIClient

from accounts.models import Account
from accounts.services import api_key_create
from billing.account_opening import account_create
from billing.credit import credit_debit, credit_grant, purchase_record
from billing.ledger import Book
from billing.models import CreditLot, LedgerEntry, LedgerTransaction, LowBalanceEvent, Purchase
from metering.catalog import catalog_caches_clear, model_upsert
from metering.models import Hold, InferenceModel, UsageRecord
from tests.conftest import INTERNAL_TOKEN

USD = 10**9
# Prices of the seeded size classes (DESIGN.md), in nano-dollars per second.
RATE_7B, RATE_15B, RATE_35B, RATE_70B, RATE_120B = 72_000, 108_000, 144_000, 216_000, 360_000

MODEL_7B = "test/open-7b"
MODEL_15B = "test/open-15b"
MODEL_35B = "test/open-35b"
MODEL_70B = "test/open-70b"
MODEL_CLOSED = "test/closed-gpt"  # $2.50 in, $10.00 out per million tokens
MODEL_CLOSED_CHEAP = "test/closed-mini"  # $0.15 in, $0.60 out per million tokens
MODEL_IMAGES = "test/closed-images"  # $0.04 per image
MODEL_VIDEO = "test/closed-video"  # $0.10 per second
MODEL_REQUEST = "test/closed-search"  # $0.006 per request

# Enough simultaneous PostgreSQL connections to race for real, few enough to share the
# server (max_connections is usually 100) with other work. A server with room for more
# can take every caller at once: RUN_PATH_TEST_CONNECTIONS=200.
CONCURRENT_CONNECTIONS = int(os.environ.get("RUN_PATH_TEST_CONNECTIONS", "40"))

_emails = itertools.count()


def models_ensure() -> None:
    """The catalog the tests run against (idempotent)."""
    for model_id, params_b in ((MODEL_7B, 7), (MODEL_15B, 13), (MODEL_35B, 34),
                               (MODEL_70B, 70)):
        model_upsert(model_id=model_id, kind=InferenceModel.Kind.OPEN,
                     params_b=Decimal(params_b))
    model_upsert(model_id=MODEL_CLOSED, kind=InferenceModel.Kind.CLOSED, provider="openai",
                 input_nanos_per_mtok=2_500_000_000, output_nanos_per_mtok=10 * USD)
    model_upsert(model_id=MODEL_CLOSED_CHEAP, kind=InferenceModel.Kind.CLOSED,
                 provider="openai", input_nanos_per_mtok=150_000_000,
                 output_nanos_per_mtok=600_000_000)
    catalog_caches_clear()


def unit_models_ensure() -> None:
    """Closed models priced per unit (the contract's examples' prices; idempotent)."""
    for model_id, prices in ((MODEL_IMAGES, {"nanos_per_image": 40_000_000}),
                             (MODEL_VIDEO, {"nanos_per_second": 100_000_000}),
                             (MODEL_REQUEST, {"nanos_per_request": 6_000_000})):
        model_upsert(model_id=model_id, kind=InferenceModel.Kind.CLOSED, provider="acme",
                     **prices)
    catalog_caches_clear()


@dataclass
class Customer:
    account_id: uuid.UUID
    key: str
    key_id: uuid.UUID

    def account(self) -> Account:
        return Account.objects.get(id=self.account_id)


def customer_create(*, purchased_usd: int | str | None = None, now: datetime | None = None,
                    plan: str | None = None) -> Customer:
    """A new account (free plan, $1 free grant) with one API key; `purchased_usd` records
    a purchase that counts toward the tier."""
    account, _ = account_create(email=f"runpath-{next(_emails)}-{uuid.uuid4().hex[:8]}"
                                      "@example.com", now=now)
    if purchased_usd is not None:
        purchase_record(account_id=account.id, amount_nanos=usd(purchased_usd),
                        reference=f"INV-{uuid.uuid4().hex}", kind=Purchase.Kind.INVOICE,
                        cash_book=Book.EXTERNAL_CASH, now=now)
    if plan is not None:
        Account.objects.filter(id=account.id).update(plan_id=plan)
        catalog_caches_clear()
    api_key, key = api_key_create(account_id=account.id, name="gateway", now=now)
    return Customer(account_id=account.id, key=key, key_id=api_key.id)


def usd(amount) -> int:
    return int(Decimal(str(amount)) * USD)


def balance_set(*, account_id, balance_nanos: int, now: datetime | None = None) -> None:
    """Bring the account's available credit to exactly `balance_nanos` (grant or debit)."""
    account = Account.objects.get(id=account_id)
    difference = balance_nanos - account.balance_nanos
    if difference > 0:
        credit_grant(account_id=account_id, amount_nanos=difference, reason="test top-up",
                     now=now)
    elif difference < 0:
        credit_debit(account_id=account_id, amount_nanos=-difference, reason="test trim",
                     now=now)
    assert Account.objects.get(id=account_id).balance_nanos == balance_nanos


def authorize_body(customer: Customer, model: str = MODEL_7B, **fields) -> dict:
    return {"api_key": customer.key, "model": model,
            "request_id": fields.pop("request_id", f"req-{uuid.uuid4().hex}"), **fields}


def world_snapshot(account_id=None) -> dict:
    """Everything a call could write: row counts, and the account's working state."""
    snapshot = {
        "holds": list(Hold.objects.order_by("id").values_list(
            "id", "status", "lease_expires_at", "charged_nanos")),
        "usage_records": UsageRecord.objects.count(),
        "ledger_transactions": LedgerTransaction.objects.count(),
        "ledger_entries": LedgerEntry.objects.count(),
        "lots": list(CreditLot.objects.order_by("id").values_list("id", "remaining_nanos",
                                                                  "expired_at")),
        "low_balance_events": LowBalanceEvent.objects.count(),
    }
    if account_id is not None:
        snapshot["account"] = Account.objects.filter(id=account_id).values(
            "balance_nanos", "held_nanos", "slots_in_use", "receivable_nanos", "status",
            "credit_valid_until", "tier_id", "tier_valid_until").get()
    return snapshot


def open_holds(account_id) -> dict:
    return Hold.objects.filter(account_id=account_id, status=Hold.Status.OPEN).aggregate(
        n=Count("id"), held=Sum("reserved_nanos", default=0), slots=Sum("weight", default=0))


def utc(*args) -> datetime:
    return datetime(*args, tzinfo=UTC)


def run_in_threads(count: int, work: Callable[[int], object]) -> list:
    """Run `work(i)` in `count` threads, each on its own database connection, released
    together by a barrier. Returns the results in thread order; re-raises the first
    exception a thread raised."""
    barrier = threading.Barrier(count)
    results: list = [None] * count
    errors: list = []

    def thread_main(i: int) -> None:
        try:
            connection.ensure_connection()  # connect before the race, not during it
            barrier.wait(timeout=60)
            results[i] = work(i)
        except BaseException as exc:  # re-raised in the caller
            errors.append(exc)
            barrier.abort()
        finally:
            connections.close_all()

    threads = [threading.Thread(target=thread_main, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return results


@pytest.fixture
def catalog():
    """The test models in the catalog. The test's own django_db mark gives database
    access (plain or transactional)."""
    models_ensure()


@pytest.fixture(autouse=True)
def fresh_caches():
    """Every test starts with empty in-process catalog caches and an empty Redis cache
    (rate-limit counters live there)."""
    catalog_caches_clear()
    cache.clear()
    yield
    catalog_caches_clear()


@pytest.fixture
def eager_tasks():
    """Celery tasks run in the calling process (a fan-out task's .delay() too), as the
    worker would run them."""
    from config.celery import app

    previous = app.conf.task_always_eager
    app.conf.task_always_eager = True
    yield
    app.conf.task_always_eager = previous


def service_client(authorization: str | None = f"Bearer {INTERNAL_TOKEN}") -> APIClient:
    """A client for /internal/v1/, with the service token unless told otherwise."""
    client = APIClient()
    if authorization is not None:
        client.credentials(HTTP_AUTHORIZATION=authorization)
    return client
