"""The money pages without a browser: bad input changes nothing, another account's ids
are 404 and change nothing, CSRF is enforced, and an unconfigured service says so."""

import uuid

import pytest
from django.test import Client

from billing.account_opening import account_create
from billing.credit import purchase_record
from billing.models import BillingProfile, Card, CreditLot, Payment, Purchase
from tests.support import USD, account_state, db_counts


@pytest.fixture(autouse=True)
def _payments_configured(settings):
    # Nothing here reaches Stripe: every request is refused or served before a call.
    settings.STRIPE_SECRET_KEY = "sk_test_never_called"
    settings.STRIPE_API_BASE = "http://127.0.0.1:9"


def login(email: str | None = None):
    account, _ = account_create(email=email or f"{uuid.uuid4().hex[:10]}@example.com")
    client = Client()
    client.force_login(account.user)
    return account, client


def card_of(account, last4="4242") -> Card:
    return Card.objects.create(account=account, stripe_payment_method_id=f"pm_{uuid.uuid4().hex}",
                               brand="visa", last4=last4, exp_month=12, exp_year=2034)


def money_rows(account_id) -> dict:
    return {"state": account_state(account_id),
            "cards": list(Card.objects.filter(account_id=account_id).order_by("id").values()),
            "payments": Payment.objects.filter(account_id=account_id).count(),
            "profile": list(BillingProfile.objects.filter(account_id=account_id).values())}


@pytest.mark.django_db
class TestAnotherAccountsObjects:
    @pytest.fixture
    def victim(self):
        account, _ = account_create(email="victim@example.com")
        card = card_of(account)
        BillingProfile.objects.update_or_create(account=account, defaults={"default_card": card})
        purchase, _ = purchase_record(account_id=account.id, amount_nanos=10 * USD,
                                      reference="INV-VICTIM", kind=Purchase.Kind.INVOICE)
        payment = Payment.objects.create(account=account, purpose="purchase",
                                         amount_nanos=10 * USD, idempotency_key="victim-1",
                                         status="requires_action")
        return account, card, purchase, payment

    def test_cards_purchases_receipts_and_payments_of_another_account_are_404(self, victim):
        account, card, purchase, payment = victim
        _, client = login()
        before = money_rows(account.id)

        assert client.get(f"/dashboard/credits/purchases/{purchase.id}/").status_code == 404
        assert client.post(f"/dashboard/cards/{card.id}/default").status_code == 404
        assert client.get(f"/dashboard/cards/{card.id}/remove").status_code == 404
        assert client.post(f"/dashboard/cards/{card.id}/remove").status_code == 404
        assert client.post(f"/dashboard/credits/payments/{payment.id}/confirm").status_code \
            == 404
        # Paying with another account's card is refused next to the field.
        response = client.post("/dashboard/credits/", {
            "amount": "10.00", "card": str(card.id), "idempotency_token": str(uuid.uuid4())})
        assert response.status_code == 400
        assert "Select a valid choice" in response.content.decode()
        # Nor does auto-reload accept it.
        response = client.post("/dashboard/auto-reload/", {
            "form": "auto_reload", "enabled": "on", "threshold": "3", "amount": "10",
            "monthly_max": "100", "card": str(card.id)})
        assert response.status_code == 400

        assert money_rows(account.id) == before
        page = client.get("/dashboard/credits/").content.decode()
        assert "INV-VICTIM" not in page and str(purchase.id) not in page
        assert "4242" not in client.get("/dashboard/cards/").content.decode()

    def test_the_owner_sees_them(self, victim):
        account, _, purchase, _ = victim
        client = Client()
        client.force_login(account.user)
        receipt = client.get(f"/dashboard/credits/purchases/{purchase.id}/")
        assert receipt.status_code == 200
        assert "INV-VICTIM" in receipt.content.decode()
        assert "$10.00" in receipt.content.decode()
        assert "4242" in client.get("/dashboard/cards/").content.decode()


@pytest.mark.django_db
class TestBadInputChangesNothing:
    @pytest.mark.parametrize(("amount", "message"), [
        ("", "This field is required."),
        ("ten", "Enter an amount in dollars"),
        ("10.001", "whole cents"),
        ("-5", "Enter an amount"),
        ("1.00", "Buy between $5.00 and $10000.00"),
        ("20000", "Buy between"),
    ])
    def test_a_bad_purchase_amount_is_shown_next_to_the_field(self, amount, message):
        account, client = login()
        card = card_of(account)
        before, counts = money_rows(account.id), db_counts()

        response = client.post("/dashboard/credits/", {
            "amount": amount, "card": str(card.id), "idempotency_token": str(uuid.uuid4())})

        assert response.status_code == 400
        assert message in response.content.decode()
        assert money_rows(account.id) == before and db_counts() == counts

    def test_a_new_card_without_its_details_is_refused(self):
        account, client = login()
        before = money_rows(account.id)
        response = client.post("/dashboard/credits/", {
            "amount": "10", "card": "new", "idempotency_token": str(uuid.uuid4())})
        assert response.status_code == 400
        assert "Enter the new card" in response.content.decode()
        assert money_rows(account.id) == before

    def test_the_amount_is_checked_before_a_new_card_is_set_up(self):
        account, client = login()
        before = money_rows(account.id)
        response = client.post("/dashboard/credits/setup-intent", {"amount": "2"})
        assert response.status_code == 400
        assert "amount" in response.json()["fields"]
        assert money_rows(account.id) == before

    @pytest.mark.parametrize(("data", "field_message"), [
        ({"threshold": "3", "amount": "10", "monthly_max": "5"}, "at least the amount"),
        ({"threshold": "abc", "amount": "10", "monthly_max": "100"}, "Enter an amount"),
        ({"threshold": "3", "amount": "1", "monthly_max": "100"}, "Buy between"),
        ({"threshold": "3", "amount": "10", "monthly_max": "100"}, "Save a card"),
    ])
    def test_bad_auto_reload_settings_change_nothing(self, data, field_message):
        account, client = login()
        before = money_rows(account.id)
        response = client.post("/dashboard/auto-reload/",
                               {"form": "auto_reload", "enabled": "on", "card": "", **data})
        assert response.status_code in (400, 402)
        assert field_message in response.content.decode()
        assert money_rows(account.id) == before

    def test_bad_auto_scale_maximum_changes_nothing(self):
        account, client = login()
        before = money_rows(account.id)
        response = client.post("/dashboard/auto-reload/",
                               {"form": "auto_scale", "max_monthly_spend": "-1"})
        assert response.status_code == 400
        assert money_rows(account.id) == before

    def test_auto_reload_settings_are_saved(self):
        account, client = login()
        card = card_of(account)
        response = client.post("/dashboard/auto-reload/", {
            "form": "auto_reload", "enabled": "on", "threshold": "4.50", "amount": "20",
            "monthly_max": "60", "card": str(card.id)})
        assert response.status_code == 302
        profile = BillingProfile.objects.get(account=account)
        assert (profile.auto_reload_enabled, profile.auto_reload_threshold_nanos,
                profile.auto_reload_amount_nanos, profile.auto_reload_monthly_max_nanos,
                profile.auto_reload_card_id) == (True, 4_500_000_000, 20 * USD, 60 * USD,
                                                 card.id)
        page = client.get("/dashboard/auto-reload/").content.decode()
        assert "4.50" in page and "$0.00</strong> of $60.00" in page


@pytest.mark.django_db
def test_forms_need_the_csrf_token():
    account, _ = account_create(email="csrf@example.com")
    client = Client(enforce_csrf_checks=True)
    client.force_login(account.user)
    card = card_of(account)
    before = money_rows(account.id)
    for url, data in [("/dashboard/credits/", {"amount": "10", "card": str(card.id)}),
                      (f"/dashboard/cards/{card.id}/remove", {}),
                      ("/dashboard/auto-reload/", {"form": "auto_scale",
                                                   "max_monthly_spend": "10"})]:
        assert client.post(url, data).status_code == 403
    assert money_rows(account.id) == before


@pytest.mark.django_db
def test_pages_need_a_login():
    for url in ["/dashboard/credits/", "/dashboard/cards/", "/dashboard/auto-reload/",
                "/dashboard/plan/"]:
        response = Client().get(url)
        assert response.status_code == 302 and "login" in response["Location"]


@pytest.mark.django_db
def test_without_payments_configured_the_pages_say_so_and_nothing_is_charged(settings):
    settings.STRIPE_SECRET_KEY = ""
    account, client = login()
    card = card_of(account)
    for url in ["/dashboard/credits/", "/dashboard/cards/", "/dashboard/cards/add"]:
        assert "Payments are not configured" in client.get(url).content.decode()
    before = db_counts()
    response = client.post("/dashboard/credits/", {
        "amount": "10", "card": str(card.id), "idempotency_token": str(uuid.uuid4())})
    assert response.status_code == 503
    assert "Payments are not configured" in response.content.decode()
    assert db_counts() == before
    assert not CreditLot.objects.filter(account=account, source="purchase").exists()
    assert not Payment.objects.filter(account=account).exists()
