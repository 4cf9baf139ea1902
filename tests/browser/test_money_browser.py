"""The money pages in a real browser (Debian's Chromium, driven by Playwright) against the
live server on PostgreSQL and localstripe, whose stand-in for Stripe.js renders the card
form: buy credits with the test card, a declined card, a card whose bank asks for 3-D
Secure (the cardholder completes it, or fails it), cards, auto-reload, subscribing to a
plan and cancelling it. Screenshots of
each page at 375 and 1280 px go to var/screenshots/."""

import importlib
import os
import re
from pathlib import Path

import pytest
from allauth.account.models import EmailAddress
from django.apps import apps as django_apps
from playwright.sync_api import expect

from billing.account_opening import account_create
from billing.models import BillingProfile, Card, CreditLot, Payment, Purchase, Subscription
from tests.billing.conftest import (  # noqa: F401 (fixtures)
    DECLINED_ON_CHARGE,
    DECLINED_ON_SAVE,
    GOOD_CARD,
    NEEDS_AUTHENTICATION,
    _webhooks_registered,
    delivery_recorder,
    localstripe_url,
    payg_price,
    service_webhook_url,
    stripe_client,
    stripe_live,
)

# Playwright's sync API runs an event loop in this thread; the ORM calls of the test
# itself are still plain synchronous calls.
os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")

SCREENSHOTS = Path(__file__).resolve().parents[2] / "var" / "screenshots"
PASSWORD = "a-long-browser-password"


SEEDS = ["billing.migrations.0002_seed_plans", "ratelimits.migrations.0002_seed_tiers",
         "metering.migrations.0002_seed_catalog"]


def seeded_tables_ensure() -> None:
    """The plans, tiers and size classes the migrations seed (a transactional test before
    this one may have flushed them); the seeds are get-or-create."""
    for module in SEEDS:
        importlib.import_module(module).seed(django_apps, None)


@pytest.fixture
def signed_in(stripe_live, live_server, page):  # noqa: F811
    seeded_tables_ensure()
    account, _ = account_create(email="browser-money@example.com")
    account.user.set_password(PASSWORD)
    account.user.save()
    EmailAddress.objects.create(user=account.user, email=account.user.email, verified=True,
                                primary=True)
    page.goto(f"{live_server.url}/")
    page.fill("input[name=login]", account.user.email)
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(re.compile(r"/dashboard/"))
    return account


def fill_card(page, number: str) -> None:
    element = page.locator("[data-card-element]")
    element.locator("input[placeholder=number]").fill(number)
    element.locator("input[placeholder=exp_month]").fill("12")
    element.locator("input[placeholder=exp_year]").fill("34")
    element.locator("input[placeholder=cvc]").fill("123")
    element.locator("input[placeholder=postal_code]").fill("10001")


def shoot(page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    for width in (375, 1280):
        page.set_viewport_size({"width": width, "height": 900})
        page.screenshot(path=str(SCREENSHOTS / f"money-{name}-{width}.png"), full_page=True)
    page.set_viewport_size({"width": 1280, "height": 900})


def test_buying_credits_with_a_new_card_shows_the_balance_and_tier_at_once(
        signed_in, live_server, page):
    account = signed_in
    page.goto(f"{live_server.url}/dashboard/credits/")
    expect(page.locator("[data-balance]")).to_have_text("$1.00")
    tier_before = page.locator("[data-tier]").text_content()

    page.select_option("select[name=card]", "new")
    page.fill("input[name=amount]", "25")
    fill_card(page, GOOD_CARD)
    page.click("[data-submit]")

    page.wait_for_url(re.compile(r"added="))
    expect(page.locator("[data-balance]")).to_have_text("$26.00")
    expect(page.locator("[data-purchased]")).to_have_text("$25.00")
    assert page.locator("[data-tier]").text_content() != tier_before
    expect(page.locator(".messages")).to_contain_text("$25.00 of credit added")
    assert CreditLot.objects.filter(account=account, source="purchase",
                                    amount_nanos=25 * 10**9).count() == 1
    shoot(page, "credits")

    page.locator("[data-purchase] a").first.click()
    expect(page.locator(".receipt")).to_contain_text("Visa ending 4242")
    expect(page.locator(".receipt")).to_contain_text("$25.00")
    shoot(page, "receipt")


def test_a_card_declined_on_charge_shows_the_reason_and_adds_nothing(
        signed_in, live_server, page):
    account = signed_in
    page.goto(f"{live_server.url}/dashboard/credits/")
    page.select_option("select[name=card]", "new")
    page.fill("input[name=amount]", "10")
    fill_card(page, DECLINED_ON_CHARGE)
    page.click("[data-submit]")

    expect(page.locator(".field.has-error")).to_contain_text("declined")
    expect(page.locator(".field.has-error")).to_contain_text("No credit was added")
    expect(page.locator("[data-balance]")).to_have_text("$1.00")
    assert not CreditLot.objects.filter(account=account, source="purchase").exists()
    assert Payment.objects.get(account=account).status == Payment.Status.FAILED


def test_a_card_declined_when_saved_shows_the_reason_and_saves_nothing(
        signed_in, live_server, page):
    account = signed_in
    page.goto(f"{live_server.url}/dashboard/credits/")
    page.select_option("select[name=card]", "new")
    page.fill("input[name=amount]", "10")
    fill_card(page, DECLINED_ON_SAVE)
    page.click("[data-submit]")

    expect(page.locator(".new-card .errorlist")).to_contain_text("declined")
    assert not Card.objects.filter(account=account).exists()
    assert not Payment.objects.filter(account=account).exists()
    assert not CreditLot.objects.filter(account=account, source="purchase").exists()


def authenticate(page, *, complete: bool) -> None:
    """The bank's 3-D Secure step, as localstripe's stand-in for Stripe.js shows it."""
    page.click("button:has-text('Complete authentication')" if complete
               else "button:has-text('Fail authentication')")


@pytest.mark.parametrize("complete", [True, False], ids=["completed", "failed"])
def test_a_purchase_the_bank_asks_to_authenticate_adds_credit_only_once_confirmed(
        signed_in, live_server, page, complete):
    account = signed_in
    page.goto(f"{live_server.url}/dashboard/credits/")
    page.select_option("select[name=card]", "new")
    page.fill("input[name=amount]", "10")
    fill_card(page, NEEDS_AUTHENTICATION)
    page.click("[data-submit]")
    # Saving the card: the bank asks the cardholder first, who confirms
    authenticate(page, complete=True)

    # Then the charge: the bank asks again, the page says so, and nothing is added yet
    expect(page.locator("form[data-payment-needs-action]")).to_contain_text(
        "Your bank asks you to confirm the payment of $10.00")
    expect(page.locator("[data-balance]")).to_have_text("$1.00")
    assert not CreditLot.objects.filter(account=account, source="purchase").exists()
    if complete:
        shoot(page, "3ds")
    authenticate(page, complete=complete)

    if complete:
        # Confirmed: the credit is added once, and the page shows it
        page.wait_for_url(re.compile(r"added="))
        expect(page.locator("[data-balance]")).to_have_text("$11.00")
        expect(page.locator(".messages")).to_contain_text("$10.00 of credit added")
        assert CreditLot.objects.filter(account=account, source="purchase").count() == 1
        assert Payment.objects.get(account=account).status == Payment.Status.SUCCEEDED
    else:
        # Failed: the reason next to the card, no credit, nothing charged
        expect(page.locator(".field.has-error")).to_contain_text(
            "Your bank did not confirm the payment")
        expect(page.locator(".field.has-error")).to_contain_text("No credit was added")
        expect(page.locator("[data-balance]")).to_have_text("$1.00")
        assert not CreditLot.objects.filter(account=account, source="purchase").exists()
        assert Payment.objects.get(account=account).status != Payment.Status.SUCCEEDED
        assert Card.objects.filter(account=account).count() == 1  # the card stays saved
        # Trying again is one click: the form keeps the amount and the card just saved
        expect(page.locator("input[name=amount]")).to_have_value("10.00")
        expect(page.locator("select[name=card]")).to_have_value(
            str(Card.objects.get(account=account).id))
        shoot(page, "3ds-failed")


def test_cards_are_added_made_default_and_removed_and_auto_reload_is_set(
        signed_in, live_server, page):
    account = signed_in
    for number in (GOOD_CARD, "5555555555554444"):
        page.goto(f"{live_server.url}/dashboard/cards/add")
        fill_card(page, number)
        page.click("[data-submit]")
        page.wait_for_url(re.compile(r"/dashboard/cards/$"))
    cards = list(Card.objects.filter(account=account).order_by("created_at"))
    assert len(cards) == 2
    expect(page.locator(f"[data-card='{cards[0].id}'] .badge")).to_have_text("Default")
    shoot(page, "cards")

    page.locator(f"[data-card='{cards[1].id}'] button", has_text="Make default").click()
    expect(page.locator(f"[data-card='{cards[1].id}'] .badge")).to_have_text("Default")
    assert BillingProfile.objects.get(account=account).default_card_id == cards[1].id

    page.locator(f"[data-card='{cards[0].id}'] a", has_text="Remove").click()
    shoot(page, "card-remove")
    page.click("button:has-text('Remove card')")
    page.wait_for_url(re.compile(r"/dashboard/cards/$"))
    expect(page.locator(f"[data-card='{cards[0].id}']")).to_have_count(0)
    assert Card.objects.get(id=cards[0].id).removed_at is not None

    page.goto(f"{live_server.url}/dashboard/cards/add")
    shoot(page, "card-add")

    page.goto(f"{live_server.url}/dashboard/auto-reload/")
    page.check("input[name=enabled]")
    page.fill("input[name=threshold]", "5")
    page.fill("input[name=amount]", "20")
    page.fill("input[name=monthly_max]", "10")
    page.click("button:has-text('Save auto-reload')")
    expect(page.locator(".field.has-error")).to_contain_text("at least the amount")
    assert not BillingProfile.objects.get(account=account).auto_reload_enabled
    page.fill("input[name=monthly_max]", "80")
    page.click("button:has-text('Save auto-reload')")
    expect(page.locator(".messages")).to_contain_text("Auto-reload is on")
    profile = BillingProfile.objects.get(account=account)
    assert (profile.auto_reload_enabled, profile.auto_reload_monthly_max_nanos) == (
        True, 80 * 10**9)
    shoot(page, "auto-reload")

    page.goto(f"{live_server.url}/dashboard/plan/")
    shoot(page, "plan")


def test_subscribing_to_a_plan_and_cancelling_it_at_the_period_end(
        signed_in, live_server, page, payg_price):  # noqa: F811
    account = signed_in
    # Given a customer on the free plan: the paid plan asks for a card first
    page.goto(f"{live_server.url}/dashboard/plan/")
    expect(page.locator("[data-current-plan]")).to_have_text("Free")
    payg = page.locator("[data-plan=payg]")
    expect(payg).to_contain_text("Add a card")
    expect(payg.locator("button")).to_have_count(0)

    # When they add a card and subscribe to pay-as-you-go
    page.goto(f"{live_server.url}/dashboard/cards/add")
    fill_card(page, GOOD_CARD)
    page.click("[data-submit]")
    page.wait_for_url(re.compile(r"/dashboard/cards/$"))
    page.goto(f"{live_server.url}/dashboard/plan/")
    payg.locator("button", has_text="Subscribe for $3.00/month").click()

    # Then they are on it at once, with its first month's credit, and see when the next
    # invoice comes
    expect(page.locator(".messages")).to_contain_text("You are on the Pay-as-you-go plan")
    expect(page.locator("[data-current-plan]")).to_have_text("Pay-as-you-go")
    expect(payg.locator(".badge")).to_have_text("Current plan")
    expect(page.locator("[data-next-invoice]")).not_to_be_empty()
    subscription = Subscription.objects.get(account=account)
    assert (subscription.plan_id, subscription.status) == ("payg", "active")
    assert Purchase.objects.filter(account=account, kind="subscription").count() == 1
    shoot(page, "plan-subscribed")

    # When they cancel, and first change their mind on the confirmation page
    payg.locator("a", has_text="Cancel subscription").click()
    page.click("a:has-text('Keep my plan')")
    page.wait_for_url(re.compile(r"/dashboard/plan/$"))
    subscription.refresh_from_db()
    assert not subscription.cancel_at_period_end
    payg.locator("a", has_text="Cancel subscription").click()
    shoot(page, "plan-cancel")
    page.click("button:has-text('Cancel subscription')")

    # Then the plan stays until the period ends, and the page says until when
    expect(page.locator(".messages")).to_contain_text("you keep it until then")
    expect(page.locator("[data-current-plan]")).to_have_text("Pay-as-you-go")
    expect(page.locator(".lead")).to_contain_text("you are back on Free after that")
    expect(payg.locator("a", has_text="Cancel subscription")).to_have_count(0)
    subscription.refresh_from_db()
    assert subscription.cancel_at_period_end and subscription.status == "active"
    assert Subscription.objects.filter(account=account).count() == 1
