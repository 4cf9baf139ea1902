"""Keys that run and keys that pay: the provisioning API's "kind", and authorize refusing
a management key (the customer API's side is in tests/billing/test_key_scopes.py)."""

import pytest

from accounts.models import ApiKey
from accounts.services import api_key_create
from tests.factories import AccountFactory
from tests.runpath import (  # noqa: F401 (fixtures)
    MODEL_7B,
    MODEL_CLOSED_CHEAP,
    catalog,
    customer_create,
    fresh_caches,
    world_snapshot,
)
from tests.support import BASE, assert_error, db_counts

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("catalog")]


def keys_url(account_id) -> str:
    return f"{BASE}/accounts/{account_id}/api-keys"


def test_a_key_is_an_inference_key_unless_asked_otherwise(api):
    account = AccountFactory()

    response = api.post(keys_url(account.id), {"name": "app"}, format="json")

    assert response.status_code == 201
    assert response.json()["kind"] == "inference"
    assert ApiKey.objects.get(id=response.json()["id"]).kind == ApiKey.Kind.INFERENCE


@pytest.mark.parametrize("kind", ["inference", "management"])
def test_the_kind_asked_for_is_stored_and_answered(api, anon_api, kind):
    account = AccountFactory()

    response = api.post(keys_url(account.id), {"name": "ops", "kind": kind}, format="json")

    assert response.status_code == 201
    body = response.json()
    assert body["kind"] == kind
    assert set(body) == {"id", "name", "prefix", "key", "expires_at", "kind"}
    assert ApiKey.objects.get(id=body["id"], account=account).kind == kind
    # Either kind reads the credit.
    assert anon_api.get("/api/v1/credits", HTTP_AUTHORIZATION=body["key"]).status_code == 200
    # And is revoked the same way.
    assert api.delete(f"{keys_url(account.id)}/{body['id']}").status_code == 204
    assert_error(anon_api.get("/api/v1/credits", HTTP_AUTHORIZATION=body["key"]), 401,
                 "invalid_api_key")


@pytest.mark.parametrize("kind", ["admin", "Management", "", None, 1, True, ["management"],
                                  {"kind": "management"}, "management\x00"])
def test_an_unknown_kind_is_refused_and_nothing_is_written(api, kind):
    account = AccountFactory()
    before = db_counts()

    response = api.post(keys_url(account.id), {"name": "ops", "kind": kind}, format="json")

    assert_error(response, 400, "invalid_request", fields=("kind",))
    assert db_counts() == before


def test_the_service_refuses_an_unknown_kind_too():
    account = AccountFactory()
    before = db_counts()

    with pytest.raises(Exception) as refused:
        api_key_create(account_id=account.id, name="ops", kind="owner")

    assert getattr(refused.value, "code", None) == "invalid_request"
    assert "kind" in refused.value.extra["fields"]
    assert db_counts() == before


@pytest.mark.parametrize("model", [MODEL_7B, MODEL_CLOSED_CHEAP])
def test_authorize_refuses_a_management_key_and_writes_nothing(api, model):
    # Given an account with credit whose inference key runs the model
    customer = customer_create(purchased_usd=10)
    management = api.post(keys_url(customer.account_id), {"name": "ops",
                                                           "kind": "management"},
                          format="json").json()["key"]
    before = world_snapshot(customer.account_id)

    # When the management key is sent to authorize, twice (the second from the key cache)
    answers = [api.post(f"{BASE}/authorize", {"api_key": management, "model": model,
                                              "request_id": f"ops-{i}"}, format="json")
               for i in range(2)]

    # Then both are 401 invalid_api_key, and nothing was held or written
    for answer in answers:
        assert_error(answer, 401, "invalid_api_key")
    assert world_snapshot(customer.account_id) == before
    # while the account's inference key runs the same model
    response = api.post(f"{BASE}/authorize", {"api_key": customer.key, "model": model,
                                              "request_id": "app-1"}, format="json")
    assert response.status_code == 200, response.content
    api.post(f"{BASE}/holds/{response.json()['hold_id']}/release", {}, format="json")
