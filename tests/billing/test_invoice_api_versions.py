"""Plan invoices in the shape of current Stripe API versions (since 2025-03-31): no
payment_intent on the invoice, the subscription under parent.subscription_details."""

import pytest

from billing.models import Payment, Purchase
from billing.refunds import purchase_for_payment_intent
from tests.billing.conftest import deliver, event_payload, subscription_made_at_stripe
from tests.support import assert_books_agree

pytestmark = pytest.mark.usefixtures("stripe_live")


def _current_api_shape(invoice: dict) -> dict:
    shaped = {key: value for key, value in invoice.items()
              if key not in ("payment_intent", "charge", "paid", "subscription")}
    shaped["parent"] = {"type": "subscription_details", "subscription_details": {
        "subscription": invoice["subscription"], "metadata": {"plan_code": "payg"}}}
    return shaped


def test_a_plan_invoice_without_its_payment_intent_still_links_its_purchase(
        make_customer, save_card, stripe_client, service_webhook_url, payg_price):
    # Given a subscription made at Stripe, its first invoice paid.
    customer = make_customer()
    created = subscription_made_at_stripe(customer, save_card, stripe_client, payg_price)
    invoice = stripe_client.v1.invoices.retrieve(created.latest_invoice).to_dict()
    assert invoice["status"] == "paid" and invoice["payment_intent"]

    # When invoice.paid arrives in the current API's shape, naming no PaymentIntent.
    response = deliver(service_webhook_url,
                       event_payload("invoice.paid", _current_api_shape(invoice)))

    # Then the plan's credit is granted once, and the purchase is found from the invoice's
    # PaymentIntent (asked of Stripe), so that a refund of the invoice's charge finds it.
    assert response.status_code == 200, response.content
    assert response.json()["outcome"].startswith("plan credit granted")
    [purchase] = Purchase.objects.filter(account_id=customer.id, kind="subscription")
    assert purchase_for_payment_intent(invoice["payment_intent"]) == purchase
    assert Payment.objects.get(stripe_payment_intent_id=invoice["payment_intent"]).purpose \
        == Payment.Purpose.SUBSCRIPTION
    assert_books_agree(customer.id)
