"""A key's spend limit on the dashboard: set, changed and removed through the same service
the provisioning API uses; this period's spend and when it resets are shown; bad input is
refused next to its field with nothing changed; another account's key is not found."""

import pytest

from accounts.models import ApiKey
from tests.dashboard.conftest import run_settled
from tests.support import account_state

pytestmark = pytest.mark.django_db


def limit_url(key_id) -> str:
    return f"/dashboard/keys/{key_id}/limit/"


def test_a_limit_is_set_shown_with_this_periods_spend_and_removed(customer):
    # Given a key that already ran $0.00072 of a 7B model this month.
    run_settled(customer, seconds=10)

    # When the customer sets $5 a day on it.
    response = customer.client.post(limit_url(customer.key_id),
                                    {"limit_usd": "5", "period": "day"})

    # Then it is saved, the keys page says so, and the limit page shows the period.
    assert response.status_code == 302
    key = ApiKey.objects.get(id=customer.key_id)
    assert (key.spend_limit_nanos, key.spend_limit_period) == (5 * 10**9, "day")
    listing = customer.client.get(response["Location"]).content.decode()
    assert "$5.00 / day" in listing and "spend limit of key" in listing
    page = customer.client.get(limit_url(customer.key_id)).content.decode()
    assert "$5.00 per day" in page
    assert "Resets" in page and "UTC" in page

    # When the limit is emptied, the key has none again.
    assert customer.client.post(limit_url(customer.key_id),
                                {"limit_usd": "", "period": "day"}).status_code == 302
    key.refresh_from_db()
    assert (key.spend_limit_nanos, key.spend_limit_period) == (None, "")


@pytest.mark.parametrize(("data", "field", "reason"), [
    ({"limit_usd": "-5", "period": "month"}, "limit_usd", "decimal string"),
    ({"limit_usd": "five", "period": "month"}, "limit_usd", "decimal string"),
    ({"limit_usd": "0.0000000001", "period": "month"}, "limit_usd", "9 decimal places"),
    ({"limit_usd": "1000000.01", "period": "month"}, "limit_usd", "At most"),
    ({"limit_usd": "5", "period": "fortnight"}, "period", "valid choice"),
])
def test_bad_input_is_refused_next_to_its_field_and_changes_nothing(customer, data, field,
                                                                    reason):
    before = account_state(customer.account_id)

    response = customer.client.post(limit_url(customer.key_id), data)

    assert response.status_code == 400
    errors = response.context["form"].errors
    assert list(errors) == [field] and reason in " ".join(errors[field])
    assert f'id="id_{field}"' in response.content.decode()
    assert account_state(customer.account_id) == before


@pytest.mark.figure(12, tried="dashboard: see or set another account's key's spend limit")
def test_another_accounts_key_limit_cannot_be_seen_or_set(customer, other_customer):
    before = account_state(other_customer.account_id)

    assert customer.client.get(limit_url(other_customer.key_id)).status_code == 404
    assert customer.client.post(limit_url(other_customer.key_id),
                                {"limit_usd": "1", "period": "day"}).status_code == 404

    assert account_state(other_customer.account_id) == before
