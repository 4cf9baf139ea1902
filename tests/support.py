"""What the tests share: money, "nothing was written" snapshots, the contract's
error shape, the books, and real threads on real connections."""

import threading
from collections.abc import Callable
from datetime import UTC, datetime
from http import HTTPStatus

from django.db import connection
from django.db.models import Sum
from prometheus_client.parser import text_string_to_metric_families

from accounts.models import Account, ApiKey, User
from billing.ledger import Book
from billing.models import (
    CreditLot,
    LedgerEntry,
    LedgerTransaction,
    LowBalanceEvent,
    Purchase,
)
from config.money import usd_to_nanos
from metering.models import InferenceModel
from metering.selectors import books_discrepancies
from tests.conftest import INTERNAL_TOKEN

USD = 10**9
# A fixed instant for frozen clocks: tests say "T0 + 28 days", never "now".
T0 = datetime(2026, 3, 2, 9, 30, 15, 123456, tzinfo=UTC)
BASE = "/internal/v1"


def usd(text: str) -> int:
    """Nano-dollars from a decimal string, as the API reads money."""
    return usd_to_nanos(text)


# --- Nothing was written ----------------------------------------------------------------

COUNTED = {
    "users": User,
    "accounts": Account,
    "lots": CreditLot,
    "purchases": Purchase,
    "ledger_transactions": LedgerTransaction,
    "ledger_entries": LedgerEntry,
    "api_keys": ApiKey,
    "models": InferenceModel,
    "low_balance_events": LowBalanceEvent,
}


def db_counts() -> dict[str, int]:
    return {name: model.objects.count() for name, model in COUNTED.items()}


def account_state(account_id) -> dict:
    """Every column of the account row, and its lots and keys, for "unchanged" checks."""
    return {
        "account": Account.objects.filter(id=account_id).values().get(),
        "lots": list(CreditLot.objects.filter(account_id=account_id).order_by("id").values()),
        "keys": list(ApiKey.objects.filter(account_id=account_id).order_by("id").values()),
    }


# --- The contract's error shape -----------------------------------------------------------

ERROR_KEYS = {"status", "error", "code", "message"}


def assert_error(response, status: int, code: str, *, fields: tuple[str, ...] = (),
                 extra_keys: frozenset[str] = frozenset()) -> dict:
    """The response is the contract's error: `{"status", "error", "code", "message"}`,
    plus `"fields"` (name -> list of reasons) on a 400. `fields` names fields that must
    be among the reasons given."""
    assert response.status_code == status, (response.status_code, response.content)
    assert response["Content-Type"].startswith("application/json"), response["Content-Type"]
    body = response.json()
    expected_keys = ERROR_KEYS | extra_keys | ({"fields"} if status == 400 else set())
    assert set(body) == expected_keys, body
    assert body["status"] == status
    assert body["error"] == HTTPStatus(status).phrase
    assert body["code"] == code
    assert isinstance(body["message"], str) and body["message"]
    if status == 400:
        assert isinstance(body["fields"], dict) and body["fields"], body
        for name, reasons in body["fields"].items():
            assert isinstance(name, str)
            assert isinstance(reasons, list) and reasons, body
            assert all(isinstance(reason, str) and reason for reason in reasons), body
        missing = set(fields) - set(body["fields"])
        assert not missing, f"no reason given for {missing}: {body}"
    return body


# --- The books ------------------------------------------------------------------------------


def books(account_id) -> tuple[int, int, int]:
    """(ledger customer_credit, sum of lots' remaining credit, Account.balance_nanos)."""
    ledger = LedgerEntry.objects.filter(
        account_id=account_id, book=Book.CUSTOMER_CREDIT).aggregate(t=Sum("amount_nanos"))["t"]
    lots = CreditLot.objects.filter(account_id=account_id).aggregate(
        t=Sum("remaining_nanos"))["t"]
    balance = Account.objects.values_list("balance_nanos", flat=True).get(id=account_id)
    return ledger or 0, lots or 0, balance


def assert_books_agree(account_id, balance_nanos: int | None = None) -> None:
    """The ledger's customer credit == the lots' remaining credit == the working balance
    (and equals `balance_nanos` when given); and `ledger_check` finds nothing."""
    ledger, lots, balance = books(account_id)
    assert ledger == lots == balance, {"ledger": ledger, "lots": lots, "balance": balance}
    if balance_nanos is not None:
        assert balance == balance_nanos
    assert books_discrepancies() == []


# --- Real concurrency ---------------------------------------------------------------------


def run_concurrently(calls: list[Callable[[], object]], timeout: float = 60) -> list:
    """Run each call in its own thread, on its own database connection, released together
    by a barrier once every thread holds an open connection. Returns each call's result,
    or the exception it raised."""
    barrier = threading.Barrier(len(calls))
    results: list = [None] * len(calls)

    def worker(index: int, call: Callable[[], object]) -> None:
        try:
            connection.ensure_connection()
            barrier.wait(timeout)
            results[index] = call()
        except BaseException as exc:  # reported to the test as the call's result
            results[index] = exc
        finally:
            connection.close()

    threads = [threading.Thread(target=worker, args=(i, call), daemon=True)
               for i, call in enumerate(calls)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout)
    assert not any(thread.is_alive() for thread in threads), "a thread did not finish"
    assert not any(isinstance(r, threading.BrokenBarrierError) for r in results)
    return results


def wsgi_call(method: str, path: str, body: bytes = b"", **headers) -> tuple[str, dict, bytes]:
    """A request through the service's own WSGI entry point (as the production server
    serves it): its status line, headers and body. Header names as keywords:
    authorization="Bearer ..."."""
    from io import BytesIO
    from wsgiref.util import setup_testing_defaults

    from django.core.signals import request_finished, request_started
    from django.db import close_old_connections

    from config.wsgi import application

    path, _, query = path.partition("?")
    environ = {"PATH_INFO": path, "QUERY_STRING": query, "REQUEST_METHOD": method,
               "SERVER_NAME": "testserver", "wsgi.input": BytesIO(body),
               **{f"HTTP_{name.upper()}": value for name, value in headers.items()}}
    if body:
        environ.update(CONTENT_TYPE="application/json", CONTENT_LENGTH=str(len(body)))
    setup_testing_defaults(environ)
    answer = {}

    def start_response(status, response_headers, exc_info=None):
        answer["status"], answer["headers"] = status, dict(response_headers)

    # As Django's test client does: the test's own connection (inside the test's
    # transaction) must outlive the request.
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    try:
        response = application(environ, start_response)
        content = b"".join(response)
        if hasattr(response, "close"):  # as a WSGI server does
            response.close()
    finally:
        request_started.connect(close_old_connections)
        request_finished.connect(close_old_connections)
    return answer["status"], answer["headers"], content


# --- Metrics -------------------------------------------------------------------------------

def scrape(client) -> dict[tuple, float]:
    """GET /metrics with the service token: {(sample name, labels): value}."""
    response = client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {INTERNAL_TOKEN}")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain; version=")
    return samples(response.content.decode())


def samples(text: str) -> dict[tuple, float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def value(found: dict, name: str, **labels) -> float:
    return found.get((name, tuple(sorted(labels.items()))), 0.0)
