"""Every bad input to the run path gets the contract's error shape and writes nothing:
no hold, no usage record, no ledger row, no change to the account's money or slots, no
rate-limit count."""

import json
import uuid
from dataclasses import dataclass
from http import HTTPStatus

import pytest
from django.core.cache import cache

from metering.authorize import hold_authorize
from metering.settle import Usage, hold_settle
from tests.conftest import INTERNAL_TOKEN
from tests.runpath import (
    MODEL_7B,
    MODEL_CLOSED_CHEAP,
    customer_create,
    service_client,
    world_snapshot,
)

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("catalog")]


@dataclass
class Scene:
    customer: object
    open_hold: str  # a 7B hold, open
    closed_hold: str  # a closed-model hold, open
    settled_hold: str


@pytest.fixture
def scene() -> Scene:
    customer = customer_create(purchased_usd=3)
    open_hold = hold_authorize(api_key=customer.key, model_id=MODEL_7B,
                                        request_id="open").hold_id
    closed_hold = hold_authorize(api_key=customer.key, model_id=MODEL_CLOSED_CHEAP,
                                          request_id="closed").hold_id
    settled_hold = hold_authorize(api_key=customer.key, model_id=MODEL_7B,
                                           request_id="settled").hold_id
    hold_settle(hold_id=settled_hold, usage=Usage(inference_seconds=3))
    return Scene(customer, str(open_hold), str(closed_hold), str(settled_hold))


def everything(scene: Scene) -> dict:
    # An invalid customer key is counted toward its address's guessing limit
    # (accounts/authentication.py): that counter is the one write a refusal makes.
    return {**world_snapshot(scene.customer.account_id),
            "redis_keys": sorted(key for key in cache._cache.get_client().keys("*")
                                 if b":key-guesses:" not in key)}


def assert_contract_error(response, status: int, code: str, field: str | None = None):
    body = response.json()
    assert response.status_code == status, body
    assert response["Content-Type"] == "application/json"
    assert body["status"] == status
    assert body["error"] == HTTPStatus(status).phrase
    assert body["code"] == code
    assert isinstance(body["message"], str) and body["message"]
    if status == 400:  # the contract's 400 always says why
        assert isinstance(body.get("fields"), dict) and body["fields"], body
    if field is not None:
        assert field in body["fields"], body["fields"]
        assert all(isinstance(why, str) and why for why in body["fields"][field])
    return body


def post_raw(client, path, raw: str):
    return client.post(path, raw, content_type="application/json")


# --- Authorize ------------------------------------------------------------------------------

VALID_AUTHORIZE = {"model": MODEL_7B, "request_id": "valid-looking",
                   "estimate": {"seconds": 60}}
MISSING = object()  # the field is left out of the body
AUTHORIZE_CASES = [
    # (what is wrong, the body's changes, the field named)
    ("missing api_key", {"api_key": MISSING}, "api_key"),
    ("missing model", {"model": MISSING}, "model"),
    ("missing request_id", {"request_id": MISSING}, "request_id"),
    ("api_key a number", {"api_key": 12345}, "api_key"),
    ("api_key true", {"api_key": True}, "api_key"),
    ("api_key null", {"api_key": None}, "api_key"),
    ("api_key empty", {"api_key": ""}, "api_key"),
    ("api_key an object", {"api_key": {"key": "x"}}, "api_key"),
    ("model a number", {"model": 7}, "model"),
    ("model a list", {"model": [MODEL_7B]}, "model"),
    ("request_id a number", {"request_id": 42}, "request_id"),
    ("request_id empty", {"request_id": ""}, "request_id"),
    ("request_id too long", {"request_id": "r" * 201}, "request_id"),
    ("request_id with a NUL", {"request_id": "run\x00one"}, "request_id"),
    ("request_id with a newline", {"request_id": "run\none"}, "request_id"),
    ("request_id with DEL", {"request_id": "run\x7f"}, "request_id"),
    ("model with a NUL", {"model": "test/open\x00-7b"}, "model"),
    ("byok a string", {"byok": "true"}, "byok"),
    ("byok a number", {"byok": 1}, "byok"),
    ("byok null", {"byok": None}, "byok"),
    ("auto_scale a string", {"auto_scale": "false"}, "auto_scale"),
    ("estimate a number", {"estimate": 60}, "estimate"),
    ("estimate a string", {"estimate": "60"}, "estimate"),
    ("estimate a list", {"estimate": [60]}, "estimate"),
    ("seconds a string", {"estimate": {"seconds": "60"}}, "estimate.seconds"),
    ("seconds negative", {"estimate": {"seconds": -1}}, "estimate.seconds"),
    ("seconds true", {"estimate": {"seconds": True}}, "estimate.seconds"),
    ("seconds beyond 30 days", {"estimate": {"seconds": 30 * 86400 + 1}},
     "estimate.seconds"),
    ("input_tokens a string", {"estimate": {"input_tokens": "1000"}},
     "estimate.input_tokens"),
    ("input_tokens negative", {"estimate": {"input_tokens": -5}}, "estimate.input_tokens"),
    ("input_tokens fractional", {"estimate": {"input_tokens": 1.5}},
     "estimate.input_tokens"),
    ("max_output_tokens a string", {"estimate": {"max_output_tokens": "10"}},
     "estimate.max_output_tokens"),
    ("max_output_tokens true", {"estimate": {"max_output_tokens": True}},
     "estimate.max_output_tokens"),
]


def authorize_case_body(scene: Scene, changes: dict) -> dict:
    body = {"api_key": scene.customer.key, **VALID_AUTHORIZE, **changes}
    return {name: value for name, value in body.items() if value is not MISSING}


@pytest.mark.parametrize(("case", "changes", "field"), AUTHORIZE_CASES,
                         ids=[case for case, _, _ in AUTHORIZE_CASES])
@pytest.mark.parametrize("model", [MODEL_7B, MODEL_CLOSED_CHEAP], ids=["open", "closed"])
def test_a_bad_authorize_body_is_400_and_writes_nothing(scene, case, changes, field, model):
    changes = {"model": model, **changes}
    before = everything(scene)

    response = service_client().post("/internal/v1/authorize",
                                     authorize_case_body(scene, changes), format="json")

    assert_contract_error(response, 400, "invalid_request", field)
    assert everything(scene) == before


@pytest.mark.parametrize("raw", [
    "not json", '{"api_key": ', "[]", '"a string"', "42", "null",
    '{"api_key": "k", "model": "m", "request_id": "r", "estimate": {"seconds": NaN}}',
    '{"api_key": "k", "model": "m", "request_id": "r", "estimate": {"seconds": Infinity}}',
    '{"api_key": "k", "model": "m", "request_id": "r", "estimate": {"seconds": 1e400}}',
])
def test_a_malformed_authorize_body_is_400_and_writes_nothing(scene, raw):
    before = everything(scene)

    response = post_raw(service_client(), "/internal/v1/authorize", raw)

    assert_contract_error(response, 400, "invalid_request")
    assert everything(scene) == before


def test_a_closed_authorize_refused_as_bad_input_is_not_counted_toward_the_rate(scene):
    # Given no closed-model request counted yet in Redis (the scene's went through).
    cache.clear()
    client = service_client()

    # When 11 malformed closed-model requests arrive.
    for _ in range(11):
        response = client.post("/internal/v1/authorize", authorize_case_body(
            scene, {"model": MODEL_CLOSED_CHEAP, "estimate": {"input_tokens": "1"}}),
            format="json")
        assert response.status_code == 400

    # Then none was counted toward the free plan's request rate.
    assert cache._cache.get_client().keys("*") == []


# --- Settle ---------------------------------------------------------------------------------

SETTLE_CASES = [
    # (what is wrong, which hold, body, the field named)
    ("open: no usage", "open_hold", {}, "inference_seconds"),
    ("open: only load seconds", "open_hold", {"load_seconds": 3}, "inference_seconds"),
    ("open: tokens only", "open_hold", {"input_tokens": 5, "output_tokens": 5},
     "inference_seconds"),
    ("open: seconds a string", "open_hold", {"inference_seconds": "12.4"},
     "inference_seconds"),
    ("open: seconds negative", "open_hold", {"inference_seconds": -1}, "inference_seconds"),
    ("open: seconds true", "open_hold", {"inference_seconds": True}, "inference_seconds"),
    ("open: seconds null", "open_hold", {"inference_seconds": None}, "inference_seconds"),
    ("open: seconds beyond 30 days", "open_hold", {"inference_seconds": 10**9},
     "inference_seconds"),
    ("open: load negative", "open_hold", {"inference_seconds": 1, "load_seconds": -3},
     "load_seconds"),
    ("open: load a string", "open_hold", {"inference_seconds": 1, "load_seconds": "31"},
     "load_seconds"),
    ("closed: no usage", "closed_hold", {}, "provider_cost_usd"),
    ("closed: seconds only", "closed_hold", {"inference_seconds": 4}, "provider_cost_usd"),
    ("closed: cost a float", "closed_hold", {"provider_cost_usd": 0.0123},
     "provider_cost_usd"),
    ("closed: cost a number", "closed_hold", {"provider_cost_usd": 1},
     "provider_cost_usd"),
    ("closed: cost negative", "closed_hold", {"provider_cost_usd": "-0.01"},
     "provider_cost_usd"),
    ("closed: cost 10 decimals", "closed_hold", {"provider_cost_usd": "0.0000000001"},
     "provider_cost_usd"),
    ("closed: cost not a number", "closed_hold", {"provider_cost_usd": "twelve"},
     "provider_cost_usd"),
    ("closed: cost exponent", "closed_hold", {"provider_cost_usd": "1e-3"},
     "provider_cost_usd"),
    # The contract's pattern exactly: no surrounding space, no sign, not even on zero.
    ("closed: cost with spaces", "closed_hold", {"provider_cost_usd": " 5"},
     "provider_cost_usd"),
    ("closed: cost with a newline", "closed_hold", {"provider_cost_usd": "5\n"},
     "provider_cost_usd"),
    ("closed: cost minus zero", "closed_hold", {"provider_cost_usd": "-0"},
     "provider_cost_usd"),
    ("closed: cost plus", "closed_hold", {"provider_cost_usd": "+5"}, "provider_cost_usd"),
    ("closed: cost 5,000 digits", "closed_hold", {"provider_cost_usd": "9" * 5000},
     "provider_cost_usd"),
    ("closed: cost a nano over $1,000,000", "closed_hold",
     {"provider_cost_usd": "1000000.000000001"}, "provider_cost_usd"),
    ("closed: tokens as strings", "closed_hold",
     {"input_tokens": "1200", "output_tokens": "350"}, "input_tokens"),
    ("closed: one token count", "closed_hold", {"input_tokens": 1200}, "output_tokens"),
    ("closed: tokens negative", "closed_hold", {"input_tokens": -1, "output_tokens": 1},
     "input_tokens"),
    ("closed: tokens fractional", "closed_hold", {"input_tokens": 1.5, "output_tokens": 1},
     "input_tokens"),
    ("closed: tokens true", "closed_hold", {"input_tokens": True, "output_tokens": 1},
     "input_tokens"),
]


@pytest.mark.parametrize(("case", "which", "body", "field"), SETTLE_CASES,
                         ids=[case for case, _, _, _ in SETTLE_CASES])
def test_a_bad_settle_body_is_400_and_writes_nothing(scene, case, which, body, field):
    before = everything(scene)

    response = service_client().post(f"/internal/v1/holds/{getattr(scene, which)}/settle",
                                     body, format="json")

    assert_contract_error(response, 400, "invalid_request", field)
    assert everything(scene) == before


@pytest.mark.parametrize("action", ["settle", "release", "heartbeat"])
@pytest.mark.parametrize("raw", ["not json", "[]", '"a string"', "7", "null"])
def test_a_malformed_hold_body_is_400_and_writes_nothing(scene, action, raw):
    before = everything(scene)

    response = post_raw(service_client(), f"/internal/v1/holds/{scene.open_hold}/{action}",
                        raw)

    assert_contract_error(response, 400, "invalid_request")
    assert everything(scene) == before


@pytest.mark.parametrize("action", ["settle", "release", "heartbeat"])
@pytest.mark.parametrize("hold_id", [
    str(uuid.uuid4()), "not-a-uuid", "12345", "00000000-0000-0000-0000-00000000000g",
    uuid.uuid4().hex,
], ids=["unknown", "words", "digits", "bad-hex", "unknown-hex"])
def test_an_unknown_or_malformed_hold_id_is_404_hold_not_found(scene, action, hold_id):
    before = everything(scene)

    response = service_client().post(f"/internal/v1/holds/{hold_id}/{action}",
                                     {"inference_seconds": 1}, format="json")

    assert_contract_error(response, 404, "hold_not_found")
    assert everything(scene) == before


@pytest.mark.parametrize("action", ["release", "heartbeat"])
def test_release_or_heartbeat_of_a_settled_hold_is_409_hold_closed(scene, action):
    before = everything(scene)

    response = service_client().post(f"/internal/v1/holds/{scene.settled_hold}/{action}",
                                     {}, format="json")

    body = assert_contract_error(response, 409, "hold_closed")
    assert body["hold_status"] == "settled"
    assert everything(scene) == before


# --- Who may call ---------------------------------------------------------------------------

BAD_SERVICE_CREDENTIALS = {
    "none": None,
    "wrong token": "Bearer not-the-token",
    "empty bearer": "Bearer ",
    "token without scheme": INTERNAL_TOKEN,
    "other scheme": f"Token {INTERNAL_TOKEN}",
    "token with a suffix": f"Bearer {INTERNAL_TOKEN}x",
    "token prefix": f"Bearer {INTERNAL_TOKEN[:-1]}",
    "customer key": "customer-key",
}


@pytest.mark.parametrize("credentials", BAD_SERVICE_CREDENTIALS.values(),
                         ids=BAD_SERVICE_CREDENTIALS.keys())
@pytest.mark.parametrize("endpoint", ["authorize", "settle", "release", "heartbeat"])
def test_the_internal_api_refuses_anything_but_a_service_token(scene, credentials,
                                                               endpoint):
    if credentials == "customer-key":
        credentials = f"Bearer {scene.customer.key}"
    path = ("/internal/v1/authorize" if endpoint == "authorize"
            else f"/internal/v1/holds/{scene.open_hold}/{endpoint}")
    body = ({"api_key": scene.customer.key, "model": MODEL_7B, "request_id": "sneaky"}
            if endpoint == "authorize" else {"inference_seconds": 5})
    before = everything(scene)

    response = service_client(credentials).post(path, body, format="json")

    assert_contract_error(response, 401, "unauthorized")
    assert everything(scene) == before


def test_the_second_configured_service_token_is_accepted(scene):
    response = service_client("Bearer second-token").post(
        f"/internal/v1/holds/{scene.open_hold}/heartbeat", {}, format="json")

    assert response.status_code == 200


# --- The customer's credit read -------------------------------------------------------------


@pytest.mark.parametrize("credentials", [
    None, "", "Bearer ", "bk_unknown_key", f"Bearer {INTERNAL_TOKEN}", INTERNAL_TOKEN,
    "Basic dXNlcjpwYXNz",
], ids=["none", "empty", "empty-bearer", "unknown", "service-token-bearer",
        "service-token", "basic"])
def test_the_credits_read_refuses_anything_but_a_customer_key(scene, anon_api, credentials):
    before = everything(scene)
    headers = {} if credentials is None else {"HTTP_AUTHORIZATION": credentials}

    response = anon_api.get("/api/v1/credits", **headers)

    # No key at all is "unauthorized"; a key that is not a live customer key, invalid.
    missing = credentials is None or credentials.strip() in ("", "Bearer")
    assert_contract_error(response, 401, "unauthorized" if missing else "invalid_api_key")
    assert everything(scene) == before


def test_the_credits_read_accepts_the_key_with_or_without_bearer(scene, anon_api):
    plain = anon_api.get("/api/v1/credits", HTTP_AUTHORIZATION=scene.customer.key)
    bearer = anon_api.get("/api/v1/credits", HTTP_AUTHORIZATION=f"Bearer {scene.customer.key}")

    assert plain.status_code == bearer.status_code == 200
    assert plain.json() == bearer.json()


def test_the_credits_read_does_not_take_writes(scene, anon_api):
    before = everything(scene)

    response = anon_api.post("/api/v1/credits", json.dumps({}),
                             content_type="application/json",
                             HTTP_AUTHORIZATION=scene.customer.key)

    assert_contract_error(response, 405, "method_not_allowed")
    assert everything(scene) == before


# --- Edges that must hold exactly -----------------------------------------------------------


@pytest.mark.parametrize(("cost", "charged"), [
    ("0", "0.000000000"),  # a free call is charged nothing, not refused
    ("1000000", "1020000.000000000"),  # the largest provider cost taken, plus 2%
])
def test_provider_costs_at_the_edges_are_charged(scene, cost, charged):
    from billing.credit import credit_grant

    credit_grant(account_id=scene.customer.account_id, amount_nanos=2 * 10**15,
                 reason="room for the largest run")
    response = service_client().post(f"/internal/v1/holds/{scene.closed_hold}/settle",
                                     {"provider_cost_usd": cost}, format="json")

    assert response.status_code == 200, response.json()
    assert response.json()["charged_usd"] == charged


@pytest.mark.parametrize("action", ["authorize", "settle", "release", "heartbeat"])
def test_options_names_the_methods_and_changes_nothing(scene, action):
    before = everything(scene)
    path = ("/internal/v1/authorize" if action == "authorize"
            else f"/internal/v1/holds/{scene.open_hold}/{action}")

    response = service_client().options(path)

    assert response.status_code == 204
    assert response["Allow"] == "POST, OPTIONS"
    assert everything(scene) == before


def test_a_body_over_the_size_limit_gets_the_contracts_json(scene, settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1_000
    before = everything(scene)

    response = post_raw(service_client(), "/internal/v1/authorize",
                        json.dumps({**VALID_AUTHORIZE, "api_key": scene.customer.key,
                                    "padding": "x" * 2_000}))

    assert_contract_error(response, 413, "payload_too_large")
    assert "1000 bytes" in response.json()["message"]
    assert everything(scene) == before
