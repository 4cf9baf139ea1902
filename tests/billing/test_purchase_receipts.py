"""A card purchase on localstripe ends with one receipt email naming the card, however
many times the payment's success is reported (the API's answer and Stripe's webhook)."""

import pytest

from billing.models import Purchase
from notifications.models import EmailNotice
from tests.runpath import eager_tasks  # noqa: F401 (fixture)

pytestmark = pytest.mark.usefixtures("stripe_live", "eager_tasks")


def test_a_card_purchase_sends_one_receipt_naming_the_card(make_customer, save_card,
                                                           settings, stripe_live, mailoutbox):
    settings.SITE_URL = "https://dashboard.example.test"
    customer = make_customer()
    assert save_card(customer).status_code == 201

    bought = customer.api.post("/api/v1/purchases", {"amount_usd": "25.00"}, format="json")
    assert bought.status_code == 201, bought.content
    payment_intent = bought.data["payment_intent_id"]
    stripe_live.wait_for("payment_intent.succeeded", payment_intent)
    stripe_live.wait_quiet(since=0)

    [purchase] = Purchase.objects.filter(account_id=customer.id)
    receipts = [email for email in mailoutbox if email.subject.startswith("Your receipt")]
    assert len(receipts) == 1
    [email] = receipts
    assert email.to == [customer.account.user.email]
    [(html, _)] = email.alternatives
    for part in (email.body, html):
        assert "$25.00" in part
        assert "Visa ending in 4242" in part
        assert payment_intent in part
        assert (f"https://dashboard.example.test/dashboard/credits/purchases/{purchase.id}/"
                in part)
    assert EmailNotice.objects.filter(kind="purchase_receipt").count() == 1
