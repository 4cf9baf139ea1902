"""The dashboard in a real browser: a new customer's whole first visit, and every page at a
phone's and a desktop's width (screenshots in var/screenshots/)."""

import csv
import re
import uuid
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest
from allauth.account.models import EmailAddress
from django.utils import timezone
from playwright.sync_api import Page, expect

from accounts.models import Account, ApiKey
from accounts.services import api_key_create, api_key_revoke
from billing.credit import credit_grant, purchase_record
from billing.ledger import Book
from billing.models import Purchase
from dashboard.navigation import nav_links
from tests.browser.conftest import WIDTHS
from tests.dashboard.conftest import PASSWORD, customer_signed_in, run_settled
from tests.runpath import MODEL_7B, MODEL_35B, MODEL_CLOSED, MODEL_CLOSED_CHEAP, usd

pytestmark = pytest.mark.django_db(transaction=True, serialized_rollback=True)


def _log_in(page: Page, base: str, email: str, password: str = PASSWORD) -> None:
    page.goto(base + "/")
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Sign In").click()
    expect(page.get_by_role("heading", name="Overview")).to_be_visible()


def test_sign_up_verify_log_in_create_a_key_export_usage_log_out(
        page: Page, live_server, mailoutbox, catalog, tmp_path):
    base = live_server.url
    email = f"browser-{uuid.uuid4().hex[:8]}@example.com"

    # Sign up from the front door.
    page.goto(base + "/")
    page.get_by_role("link", name="sign up").click()
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password", exact=True).fill(PASSWORD)
    page.get_by_label("Password (again)").fill(PASSWORD)
    page.get_by_role("button", name="Sign Up").click()
    expect(page.get_by_role("heading", name="Verify Your Email Address")).to_be_visible()
    account = Account.objects.get(user__email=email)
    assert account.balance_nanos == usd(1)  # the free grant, at once

    # Verify by the emailed link.
    assert [m.to for m in mailoutbox] == [[email]]
    link = re.search(r"https?://\S+/account/confirm-email/\S+", mailoutbox[0].body).group(0)
    page.goto(link)
    page.get_by_role("button", name="Confirm").click()
    expect(page.get_by_role("heading", name="Overview")).to_be_visible()
    expect(page.get_by_text("$1.00").first).to_be_visible()
    assert EmailAddress.objects.get(email=email).verified

    # Log out, and back in at the root.
    page.get_by_role("button", name="Log out").click()
    expect(page.get_by_role("heading", name="Sign In")).to_be_visible()
    _log_in(page, base, email)

    # Create a key: its secret is shown once.
    page.get_by_role("link", name="API keys").first.click()
    page.get_by_label("Name").fill("browser app")
    expect(page.get_by_label("Kind")).to_have_value("inference")
    page.get_by_role("button", name="Create key").click()
    secret = page.locator("#new-key-secret").input_value()
    key = ApiKey.objects.get(account=account, name="browser app")
    assert secret.startswith(key.prefix + "_")
    expect(page.get_by_role("button", name="Copy")).to_be_visible()
    page.goto(base + "/dashboard/keys/")
    expect(page.locator("#new-key-secret")).to_have_count(0)
    assert secret not in page.content()
    expect(page.get_by_role("cell", name="browser app", exact=True)).to_be_visible()

    # Runs with that key appear on the usage page and in its CSV.
    now = timezone.now()
    run_settled_with(secret, account, MODEL_7B, seconds=12, now=now)
    run_settled_with(secret, account, MODEL_CLOSED_CHEAP, now=now)
    page.get_by_role("link", name="Usage").first.click()
    expect(page.get_by_text("2 rows")).to_be_visible()
    with page.expect_download() as download_info:
        page.get_by_role("link", name="Export CSV").click()
    path = tmp_path / "usage.csv"
    download_info.value.save_as(path)
    rows = list(csv.DictReader(Path(path).read_text().splitlines()))
    assert sorted((r["model"], r["runs"], r["date"]) for r in rows) == sorted([
        (MODEL_7B, "1", now.date().isoformat()),
        (MODEL_CLOSED_CHEAP, "1", now.date().isoformat())])
    assert next(r for r in rows if r["model"] == MODEL_7B)["charged_usd"] == "0.000864000"

    # Log out: the dashboard is closed again.
    page.get_by_role("button", name="Log out").click()
    page.goto(base + "/dashboard/")
    expect(page.get_by_role("heading", name="Sign In")).to_be_visible()


def run_settled_with(secret: str, account: Account, model_id: str, **kwargs) -> None:
    """A run through the run path with the key the customer just created on the page."""
    run_settled(SimpleNamespace(key=secret), model_id=model_id, **kwargs)


def _customer_with_a_month_of_data():
    """A customer with lots expiring at different dates (one within 7 days), a month of
    usage across models, several keys (one revoked), and purchases."""
    now = timezone.now()
    # Pay-as-you-go: a month of closed-model runs made in a moment is not rate limited.
    customer = customer_signed_in(plan="payg")
    purchase_record(account_id=customer.account_id, amount_nanos=usd(10),
                    reference="INV-SCREEN-1", kind=Purchase.Kind.INVOICE,
                    cash_book=Book.EXTERNAL_CASH, now=now - timedelta(days=24))
    purchase_record(account_id=customer.account_id, amount_nanos=usd(20),
                    reference="INV-SCREEN-2", kind=Purchase.Kind.INVOICE,
                    cash_book=Book.EXTERNAL_CASH, now=now - timedelta(days=3))
    credit_grant(account_id=customer.account_id, amount_nanos=usd(2), reason="welcome",
                 now=now - timedelta(days=10))
    _, second_secret = api_key_create(account_id=customer.account_id, name="batch jobs")
    old, _ = api_key_create(account_id=customer.account_id, name="old laptop")
    api_key_revoke(account_id=customer.account_id, key_id=old.id)
    for days_ago in range(0, 28):
        when = now - timedelta(days=days_ago, hours=1)
        run_settled(customer, model_id=MODEL_7B, seconds=600 + 97 * (days_ago % 5), now=when)
        if days_ago % 2 == 0:
            run_settled(customer, model_id=MODEL_35B, seconds=300, now=when,
                        key=second_secret)
        if days_ago % 3 != 1:
            run_settled(customer, model_id=MODEL_CLOSED, input_tokens=20_000 + days_ago * 900,
                        output_tokens=4_000, now=when)
    return customer


def _fits_the_width(page: Page) -> bool:
    return page.evaluate(
        "document.documentElement.scrollWidth <= window.innerWidth + 1")


def test_screenshots_of_every_page_at_phone_and_desktop_widths(
        browser, live_server, catalog, screenshots, mailoutbox):
    base = live_server.url
    customer = _customer_with_a_month_of_data()
    key_id = ApiKey.objects.filter(account_id=customer.account_id,
                                   revoked_at__isnull=True).first().id
    signed_in_pages = {link["label"].lower().replace(" ", "-").replace("-", "_"): link["href"]
                       for link in _nav()}
    signed_in_pages.update({
        "key_revoke": f"/dashboard/keys/{key_id}/revoke/",
        "key_limit": f"/dashboard/keys/{key_id}/limit/",
        "usage_by_model": "/dashboard/usage/?group=model",
        "change_password": "/account/password/change/",
        "two_factor": "/account/2fa/",
    })
    overflowing = []
    for width in WIDTHS:
        context = browser.new_context(viewport={"width": width, "height": 900})
        page = context.new_page()
        for name, path in {"login": "/", "sign_up": "/account/signup/",
                           "password_reset": "/account/password/reset/"}.items():
            page.goto(base + path)
            screenshots.take(page, name)
            if not _fits_the_width(page):
                overflowing.append((name, width))
        page.goto(base + "/account/signup/")
        page.get_by_role("button", name="Sign Up").click()  # empty: errors by each field
        screenshots.take(page, "sign_up_errors")

        _log_in(page, base, customer.email)
        for name, path in signed_in_pages.items():
            response = page.goto(base + path)
            assert response.status == 200, (name, path, response.status)
            screenshots.take(page, name)
            if not _fits_the_width(page):
                overflowing.append((name, width))
        page.goto(base + "/dashboard/keys/")
        page.get_by_label("Name").fill(f"new key {width}")
        page.get_by_role("button", name="Create key").click()
        screenshots.take(page, "key_created")
        page.get_by_label("Name").fill("")
        page.get_by_role("button", name="Create key").click()
        screenshots.take(page, "key_name_error")
        context.close()

    assert overflowing == []
    assert len(screenshots.taken) >= 2 * (len(signed_in_pages) + 5)


def _nav():
    return nav_links("")


def test_on_a_phone_every_key_can_be_revoked_without_scrolling_sideways(
        browser, live_server, catalog, screenshots):
    # given a customer with several keys, one with a spend limit's long label, one revoked
    customer = customer_signed_in()
    for name in ("batch jobs on the night shift", "staging"):
        api_key_create(account_id=customer.account_id, name=name)
    old, _ = api_key_create(account_id=customer.account_id, name="old laptop")
    api_key_revoke(account_id=customer.account_id, key_id=old.id)
    active = ApiKey.objects.filter(account_id=customer.account_id, revoked_at__isnull=True)
    context = browser.new_context(viewport={"width": 375, "height": 812})
    page = context.new_page()
    _log_in(page, live_server.url, customer.email)
    # when they open their keys on a phone
    page.goto(live_server.url + "/dashboard/keys/")
    screenshots.take(page, "keys_phone_rows")
    # then each active key's Revoke button lies wholly on the screen, and no table of
    # keys scrolls sideways
    buttons = page.get_by_role("link", name=re.compile(r"^Revoke "))
    expect(buttons).to_have_count(active.count())
    for index in range(active.count()):
        box = buttons.nth(index).bounding_box()
        assert box["x"] >= 0 and box["x"] + box["width"] <= 375, box
    assert page.evaluate("""[...document.querySelectorAll('.table-wrap')]
        .every(wrap => wrap.scrollWidth <= wrap.clientWidth + 1)""")
    # and each value still says what it is
    expect(page.locator("td[data-label='Spend limit']").first).to_be_visible()
    expect(page.get_by_text("old laptop")).to_be_visible()
    # and a tap on one opens that key's revocation
    buttons.first.click()
    expect(page.get_by_role("heading", name=re.compile("Revoke"))).to_be_visible()
    context.close()
