"""A service with no Stripe account says so: payments are not configured, which is not a
passing outage to retry."""

import pytest

from billing.models import BillingProfile, Card, Payment
from tests.support import assert_error, db_counts


@pytest.mark.django_db
@pytest.mark.parametrize(("method", "path", "body"), [
    ("post", "/api/v1/purchases", {"amount_usd": "10.00"}),
    ("post", "/api/v1/cards/setup-intents", None),
])
def test_payment_calls_answer_payments_not_configured_and_write_nothing(
        settings, make_customer, method, path, body):
    settings.STRIPE_SECRET_KEY = ""
    customer = make_customer()
    before = db_counts()

    response = getattr(customer.api, method)(path, body, format="json")

    answer = assert_error(response, 503, "payments_not_configured")
    assert "not configured" in answer["message"]
    assert db_counts() == before
    assert not Payment.objects.filter(account_id=customer.id).exists()
    assert not Card.objects.filter(account_id=customer.id).exists()
    assert not BillingProfile.objects.filter(account_id=customer.id,
                                             stripe_customer_id__isnull=False).exists()
