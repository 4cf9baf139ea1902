"""The console in a real browser (Debian's Chromium through Playwright): a staff member
signs in with password and authenticator code, finds an account, grants credit through
the reason form (first with a mistake, shown next to the field), and finds the action in
the audit log. Screenshots of each page at phone and desktop widths go to
var/screenshots/console/. The browser is pytest-playwright's, as for every browser test
(tests/browser/conftest.py): one Playwright for the session."""

import os
from pathlib import Path

import pytest
from django.conf import settings

from console.demo import totp_code_now
from console.models import StaffAction
from tests.console.support import staff_user
from tests.runpath import customer_create

SHOTS = Path(settings.BASE_DIR) / "var" / "screenshots" / "console"
WIDTHS = {"phone": (375, 812), "desktop": (1280, 900)}

pytestmark = [pytest.mark.django_db(transaction=True, serialized_rollback=True),
              pytest.mark.usefixtures("catalog")]


def shoot(page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    for width, height in WIDTHS.values():
        page.set_viewport_size({"width": width, "height": height})
        page.screenshot(path=str(SHOTS / f"{name}-{width}.png"), full_page=True)
    page.set_viewport_size({"width": 1280, "height": 900})


def test_staff_sign_in_with_totp_grant_credit_with_a_reason_and_see_it_audited(
        live_server, page, screenshots):
    # (`screenshots` empties var/screenshots/ once per session: before these are taken.)
    support = staff_user("support-browser@example.com", group="Support")
    device = support.totpdevice_set.get()
    customer = customer_create(purchased_usd=25)
    email = customer.account().user.email
    page.set_default_timeout(15_000)

    # Password alone does not open the console.
    page.goto(f"{live_server.url}/admin/")
    page.fill("#id_username", support.email)
    page.fill("#id_password", "pw-staff-1")
    page.click("input[type=submit]")
    assert page.locator(".errornote").count() >= 1
    assert "/admin/login/" in page.url

    # Password and the authenticator's code do.
    page.fill("#id_password", "pw-staff-1")
    page.fill("#id_otp_token", totp_code_now(device))
    page.click("input[type=submit]")
    page.wait_for_selector(".console-global-search")

    # Find the account by its email and open its page.
    page.fill(".console-global-search input", email)
    page.keyboard.press("Enter")
    page.click(f"text={email}")
    page.wait_for_selector(".console-account")
    assert page.locator(".console-card__value").first.inner_text() == "$26.00"
    shoot(page, "account")

    # Grant credit: a negative amount is refused next to the field, then a real grant.
    page.click("text=Grant credit")
    page.fill("#id_amount_usd", "-5")
    page.fill("#id_reason", "ticket #5150 outage credit")
    page.click(".console-form button[type=submit]")
    assert page.locator("#id_amount_usd_errors").inner_text() == "Must not be negative."
    shoot(page, "action-form")
    page.fill("#id_amount_usd", "10")
    page.click(".console-form button[type=submit]")
    page.wait_for_selector(".messagelist")
    assert "Granted $10.00" in page.locator(".messagelist").inner_text()
    assert page.locator(".console-card__value").first.inner_text() == "$36.00"

    # The audit log has it, with who and why.
    page.click("text=Audit log")
    row = page.locator("#result_list tbody tr").first
    assert "ticket #5150 outage credit" in row.inner_text()
    assert "support-browser@example.com" in row.inner_text()
    shoot(page, "audit-log")
    assert StaffAction.objects.get().reason == "ticket #5150 outage credit"
    assert os.path.getsize(SHOTS / "account-375.png") > 0
