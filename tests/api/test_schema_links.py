"""The served schema says what the customer API answers when a payment conflicts or Stripe
fails, and links an authorize's hold to the calls that take it (the fuzzing figure,
tests/prove/test_fuzzing.py, checks every answer against it)."""

import pytest
from rest_framework.test import APIClient

from tests.conftest import INTERNAL_TOKEN

pytestmark = pytest.mark.django_db


@pytest.fixture
def schema():
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {INTERNAL_TOKEN}")
    response = client.get("/internal/v1/schema?format=json")
    assert response.status_code == 200
    return response.json()


def statuses(schema, path, method) -> set[str]:
    return set(schema["paths"][path][method]["responses"])


def test_the_customer_api_documents_conflicts_missing_subscriptions_and_stripe_failures(
        schema):
    assert {"409", "502", "429"} <= statuses(schema, "/api/v1/purchases", "post")
    assert {"404", "409", "502"} <= statuses(schema, "/api/v1/subscription", "delete")
    assert {"409"} <= statuses(schema, "/api/v1/subscription", "post")
    assert {"502", "429"} <= statuses(schema, "/api/v1/cards", "post")
    assert "404" in statuses(schema, "/api/v1/auto-reload", "put")  # an unknown card_id
    assert "429" in statuses(schema, "/api/v1/credits", "get")
    assert "502" not in statuses(schema, "/api/v1/credits", "get")  # no Stripe call there


def test_an_authorize_links_its_hold_to_settle_release_and_heartbeat(schema):
    links = schema["paths"]["/internal/v1/authorize"]["post"]["responses"]["200"]["links"]
    operation_ids = {
        schema["paths"][f"/internal/v1/holds/{{hold_id}}/{call}"]["post"]["operationId"]
        for call in ("settle", "release", "heartbeat")}
    assert {link["operationId"] for link in links.values()} == operation_ids
    assert all(link["parameters"] == {"hold_id": "$response.body#/hold_id"}
               for link in links.values())
    account_links = schema["paths"]["/internal/v1/accounts"]["post"]["responses"]["201"][
        "links"]
    assert all(link["parameters"] == {"account_id": "$response.body#/account_id"}
               for link in account_links.values())
    assert len(account_links) == 3
