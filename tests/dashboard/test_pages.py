"""The dashboard's pages: what a customer sees and does on each."""

import csv
import io
from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone

from accounts.models import ApiKey
from billing.credit import credit_grant, purchase_record
from billing.ledger import Book
from billing.models import CreditLot, Purchase
from dashboard.templatetags.dashboard import usd
from tests.dashboard.conftest import customer_signed_in, run_settled
from tests.runpath import MODEL_7B, MODEL_35B, MODEL_CLOSED
from tests.runpath import usd as dollars
from tests.support import account_state

pytestmark = pytest.mark.django_db


def text(response) -> str:
    return response.content.decode()


@pytest.mark.parametrize(("nanos", "places", "shown"), [
    (12_340_000_000, None, "$12.34"),
    (0, None, "$0.00"),
    (72_000, None, "$0.000072"),
    (1_234_567_000_000, None, "$1,234.567"),
    (-500_000_000, None, "-$0.50"),
    (4_999_928_000, 2, "$5.00"),
    (1, 2, "$0.00"),
    (1_005_000_000, 2, "$1.01"),
])
def test_dollars_on_pages(nanos, places, shown):
    assert usd(nanos, places) == shown


# --- Overview ---------------------------------------------------------------------------


def test_overview_shows_balance_tier_next_purchase_and_expiring_lots(customer):
    now = timezone.now()
    purchase_record(account_id=customer.account_id, amount_nanos=dollars(5),
                    reference="INV-A", kind=Purchase.Kind.INVOICE,
                    cash_book=Book.EXTERNAL_CASH, now=now - timedelta(days=25))
    run_settled(customer, seconds=100)
    run_settled(customer, model_id=MODEL_CLOSED, input_tokens=1000, output_tokens=1000)

    body = text(customer.client.get("/dashboard/"))

    account = customer.account()
    assert usd(account.balance_nanos, 2) in body
    # $5 bought: the $3 tier; $10 unlocks the next, so $5 more.
    assert "Buy <strong>$5.00</strong> of credits to reach" in body
    # The $5 purchase of 25 days ago leaves the window in 3 days, and its lot expires.
    assert "leaves the 4-week window" in body
    assert "expires in the next 7 days" in body
    lot = CreditLot.objects.get(purchase__reference="INV-A")
    assert usd(lot.remaining_nanos) in body
    assert lot.expires_at.strftime("%b %-d") in body
    # The chart: one open bar and one closed bar today.
    assert body.count('class="bar-open"') == 1
    assert body.count('class="bar-closed"') == 1
    assert "$0.00 of the $100.00 monthly maximum" in body


def test_overview_without_expiring_credit_shows_no_warning(customer):
    body = text(customer.client.get("/dashboard/"))
    assert "expires in the next 7 days" not in body
    assert "<svg" in body


def test_overview_renders_in_a_bounded_number_of_queries(customer,
                                                         django_assert_max_num_queries):
    for days_ago in range(0, 30, 3):
        run_settled(customer, seconds=5, now=timezone.now() - timedelta(days=days_ago))
        run_settled(customer, model_id=MODEL_CLOSED,
                    now=timezone.now() - timedelta(days=days_ago))
    for i in range(5):
        credit_grant(account_id=customer.account_id, amount_nanos=dollars(1),
                     reason=f"grant {i}")
    customer.client.get("/dashboard/")  # warm: sessions, the pricing row

    with django_assert_max_num_queries(14):
        response = customer.client.get("/dashboard/")
    assert response.status_code == 200


# --- API keys -----------------------------------------------------------------------------


def test_create_a_key_shows_its_secret_once(customer):
    response = customer.client.post("/dashboard/keys/", {"name": "  production app ",
                                                          "kind": "inference"})

    assert response.status_code == 201
    assert response["Cache-Control"] == "no-store"
    key = ApiKey.objects.get(account_id=customer.account_id, name="production app")
    body = text(response)
    secret = body.split('id="new-key-secret" type="text" readonly value="')[1].split('"')[0]
    assert secret.startswith(key.prefix)
    from accounts.services import api_key_hash
    assert api_key_hash(secret) == key.key_hash

    listing = text(customer.client.get("/dashboard/keys/"))
    assert secret not in listing
    assert "production app" in listing and key.prefix in listing


def test_a_bad_key_name_shows_the_error_next_to_the_field_and_creates_nothing(customer):
    before = account_state(customer.account_id)

    for data in ({"name": "", "kind": "inference"}, {"name": "   ", "kind": "inference"},
                 {"name": "x" * 101, "kind": "inference"}, {"name": "ok", "kind": "admin"},
                 {"name": "ok"}):
        response = customer.client.post("/dashboard/keys/", data)
        assert response.status_code == 400
        assert 'class="field has-error"' in text(response)
        assert 'id="new-key-secret"' not in text(response)

    assert account_state(customer.account_id) == before


def test_a_management_key_is_made_on_the_page_and_shown_as_such(customer):
    response = customer.client.post("/dashboard/keys/", {"name": "billing server",
                                                          "kind": "management"})

    assert response.status_code == 201
    key = ApiKey.objects.get(account_id=customer.account_id, name="billing server")
    assert key.kind == ApiKey.Kind.MANAGEMENT
    row = text(customer.client.get("/dashboard/keys/")).split("billing server")[1]
    assert "Management" in row.split("</tr>")[0]


def test_keys_list_this_months_spend_and_last_use(customer):
    run_settled(customer, seconds=100)  # 100 s of 7B at $0.000072

    body = text(customer.client.get("/dashboard/keys/"))

    assert "$0.0072" in body
    assert "Never" not in body.split("Active keys")[1].split("</tr>")[1]


def test_revoke_asks_for_confirmation_then_revokes(customer):
    url = f"/dashboard/keys/{customer.key_id}/revoke/"
    confirm = customer.client.get(url)
    assert confirm.status_code == 200
    assert "Revoke key" in text(confirm)
    assert customer.api_key().revoked_at is None

    done = customer.client.post(url)
    assert done.status_code == 302
    assert customer.api_key().revoked_at is not None
    listing = text(customer.client.get(done["Location"]))
    assert "is revoked" in listing
    assert "Revoked and expired keys" in listing


# --- Usage --------------------------------------------------------------------------------


def _csv(response) -> list[dict]:
    content = b"".join(response.streaming_content).decode()
    return list(csv.DictReader(io.StringIO(content)))


def test_usage_by_day_and_model_with_totals_and_filters(customer):
    now = timezone.now()
    run_settled(customer, seconds=10, now=now - timedelta(days=2))
    run_settled(customer, seconds=20, now=now - timedelta(days=2))
    run_settled(customer, seconds=30, now=now)
    run_settled(customer, model_id=MODEL_CLOSED, input_tokens=2000, output_tokens=100,
                now=now)

    page = customer.client.get("/dashboard/usage/")
    body = text(page)
    assert page.status_code == 200
    assert "3 rows" in body
    assert usd(30 * 72_000) in body  # 7B, two days ago

    only_open = text(customer.client.get("/dashboard/usage/", {"kind": "open"}))
    assert MODEL_CLOSED not in only_open.split("By day and model")[1]

    by_model = text(customer.client.get("/dashboard/usage/", {"group": "model"}))
    assert "2 rows" in by_model
    assert usd(60 * 72_000) in by_model  # the 7B runs' total


def test_usage_csv_has_the_same_rows_streamed(customer):
    now = timezone.now()
    run_settled(customer, seconds=10, now=now - timedelta(days=1))
    run_settled(customer, seconds=20, now=now)
    run_settled(customer, model_id=MODEL_CLOSED, input_tokens=1000, output_tokens=1000,
                now=now)

    response = customer.client.get("/dashboard/usage.csv")

    assert response.status_code == 200
    assert response.streaming
    assert response["Content-Type"].startswith("text/csv")
    rows = _csv(response)
    assert [(r["date"], r["model"], r["runs"], r["billed_seconds"], r["charged_usd"])
            for r in rows if r["kind"] == "open"] == [
        (now.date().isoformat(), MODEL_7B, "1", "20", "0.001440000"),
        ((now - timedelta(days=1)).date().isoformat(), MODEL_7B, "1", "10", "0.000720000"),
    ]
    closed = [r for r in rows if r["kind"] == "closed"]
    assert closed[0]["input_tokens"] == "1000" and closed[0]["output_tokens"] == "1000"
    # $2.50 + $10.00 per million tokens, plus the 2% fee: $0.01275.
    assert closed[0]["charged_usd"] == "0.012750000"


def test_usage_filter_errors_are_shown_next_to_the_field(customer):
    response = customer.client.get("/dashboard/usage/", {"start": "2026-05-10",
                                                         "end": "2026-05-01"})
    assert response.status_code == 400
    assert "Must be on or before the end date." in text(response)

    bad_csv = customer.client.get("/dashboard/usage.csv", {"start": "yesterday"})
    assert bad_csv.status_code == 400


def test_usage_paginates(customer, settings):
    import dashboard.views

    dashboard.views.USAGE_PAGE_SIZE, old = 2, dashboard.views.USAGE_PAGE_SIZE
    try:
        now = timezone.now()
        for days_ago in range(5):
            run_settled(customer, seconds=1, now=now - timedelta(days=days_ago))
        first = text(customer.client.get("/dashboard/usage/"))
        last = text(customer.client.get("/dashboard/usage/", {"page": 3}))
    finally:
        dashboard.views.USAGE_PAGE_SIZE = old
    assert "Page 1 of 3" in first and "Older" in first
    assert "Page 3 of 3" in last


# --- Models -------------------------------------------------------------------------------


def test_models_page_shows_prices_and_what_unlocks_each(customer):
    body = text(customer.client.get("/dashboard/models/"))

    assert MODEL_7B in body and MODEL_35B in body and MODEL_CLOSED in body
    assert "$0.000072" in body  # 7B per second
    assert "$0.26" in body  # per hour
    # $2.50 per million input tokens plus the 2% fee.
    assert "$2.55" in body and "$10.20" in body
    # A free account: the 35B class needs $10 purchased.
    row_35b = body.split(MODEL_35B)[1].split("</tr>")[0]
    assert "Locked" in row_35b and "buy $10.00" in row_35b


# --- Signed out ---------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/dashboard/", "/dashboard/keys/", "/dashboard/usage/",
                                  "/dashboard/usage.csv", "/dashboard/models/"])
def test_every_page_needs_a_login(db, path):
    response = Client().get(path)
    assert response.status_code == 302
    assert response["Location"].startswith("/account/login/")


def test_customer_signed_in_helper_makes_distinct_accounts(db, catalog):
    assert customer_signed_in().account_id != customer_signed_in().account_id
