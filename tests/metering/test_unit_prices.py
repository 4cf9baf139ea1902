"""Closed models priced per image, per second or per request (INTERNAL_API.md, v1.1),
and the settle body that reports one kind of usage only."""

import pytest
from rest_framework.test import APIClient

from metering.models import InferenceModel
from metering.selectors import books_discrepancies
from tests.conftest import INTERNAL_TOKEN
from tests.runpath import MODEL_7B, MODEL_CLOSED, customer_create, world_snapshot

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("catalog")]

IMAGES = "acme/image-gen"  # $0.04 per image
VIDEO = "acme/video-gen"  # $0.10 per second
SEARCH = "acme/search"  # $0.006 per request
EVERYTHING = "acme/omni"  # tokens and every unit


@pytest.fixture
def api():
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {INTERNAL_TOKEN}")
    return api


@pytest.fixture
def unit_models(api):
    for model_id, prices in ((IMAGES, {"usd_per_image": "0.04"}),
                             (VIDEO, {"usd_per_second": "0.10"}),
                             (SEARCH, {"usd_per_request": "0.006"}),
                             (EVERYTHING, {"input_usd_per_mtok": "1", "output_usd_per_mtok": "2",
                                           "usd_per_image": "0.5", "usd_per_second": "0",
                                           "usd_per_request": "0.000000001"})):
        response = api.put(f"/internal/v1/models/{model_id}",
                           {"kind": "closed", "provider": "acme", **prices}, format="json")
        assert response.status_code == 200, response.json()


def authorize(api, customer, model, estimate=None, request_id=None):
    body = {"api_key": customer.key, "model": model,
            "request_id": request_id or f"run-{model}-{estimate}"}
    if estimate is not None:
        body["estimate"] = estimate
    return api.post("/internal/v1/authorize", body, format="json")


def test_the_model_reads_back_with_its_unit_prices(api, unit_models):
    body = api.get(f"/internal/v1/models/{IMAGES}").json()
    assert {k: body[k] for k in ("input_usd_per_mtok", "output_usd_per_mtok", "usd_per_image",
                                 "usd_per_second", "usd_per_request")} == {
        "input_usd_per_mtok": None, "output_usd_per_mtok": None,
        "usd_per_image": "0.040000000", "usd_per_second": None, "usd_per_request": None}


@pytest.mark.parametrize(("model", "estimate", "reserved", "usage", "charged"), [
    # The contract's examples.
    (IMAGES, {"images": 3}, "0.122400000", {"images": 3}, "0.122400000"),
    (VIDEO, {"seconds": 5.5}, "0.561000000", {"seconds": 5.5}, "0.561000000"),
    (SEARCH, {"requests": 1}, "0.006120000", {"requests": 1}, "0.006120000"),
    # Seconds are billed exactly, never rounded up to whole seconds.
    (VIDEO, {"seconds": 1}, "0.102000000", {"seconds": 0.001}, "0.000102000"),
    # With no estimate, the configured default of the model's unit (one image).
    (IMAGES, None, "0.040800000", {"images": 2}, "0.081600000"),
    # The provider's own cost stays valid for every closed model.
    (IMAGES, {"images": 1}, "0.040800000", {"provider_cost_usd": "0.05"}, "0.051000000"),
    # Rounded once, half up: 1 request at 1 nano is 1.02 nanos.
    (EVERYTHING, {"requests": 1}, "0.000000001", {"requests": 1}, "0.000000001"),
    (EVERYTHING, {"requests": 25}, "0.000000026", {"requests": 25}, "0.000000026"),
    (EVERYTHING, {"seconds": 60}, "0.000000001", {"seconds": 60}, "0.000000000"),
    (EVERYTHING, None, "0.003060000", {"input_tokens": 1000, "output_tokens": 0},
     "0.001020000"),
])
def test_units_are_reserved_and_charged_at_their_price_plus_the_fee(
        api, unit_models, model, estimate, reserved, usage, charged):
    customer = customer_create(purchased_usd=25)
    response = authorize(api, customer, model, estimate)
    assert response.status_code == 200, response.json()
    assert response.json()["reserved_usd"] == reserved
    settled = api.post(f"/internal/v1/holds/{response.json()['hold_id']}/settle", usage,
                       format="json")
    assert settled.status_code == 200, settled.json()
    assert settled.json()["charged_usd"] == charged
    assert books_discrepancies() == []


@pytest.mark.parametrize(("model", "estimate", "field"), [
    (IMAGES, {"seconds": 4}, "estimate.seconds"),
    (IMAGES, {"input_tokens": 10, "max_output_tokens": 10}, "estimate.input_tokens"),
    (VIDEO, {"images": 1}, "estimate.images"),
    (MODEL_CLOSED, {"requests": 1}, "estimate.requests"),
    (EVERYTHING, {"images": 1, "requests": 2}, "estimate.images"),
])
def test_an_estimate_in_a_unit_the_model_has_no_price_for_is_400(api, unit_models, model,
                                                                  estimate, field):
    customer = customer_create(purchased_usd=25)
    before = world_snapshot(customer.account_id)
    response = authorize(api, customer, model, estimate)
    assert response.status_code == 400, response.json()
    assert response.json()["code"] == "invalid_request"
    assert field in response.json()["fields"]
    assert world_snapshot(customer.account_id) == before


@pytest.mark.parametrize(("model", "usage", "field"), [
    (IMAGES, {"seconds": 4}, "seconds"),
    (IMAGES, {"requests": 1}, "requests"),
    (IMAGES, {"input_tokens": 10, "output_tokens": 10}, "input_tokens"),
    (VIDEO, {"images": 1}, "images"),
    (MODEL_CLOSED, {"images": 1}, "images"),
    (MODEL_CLOSED, {"seconds": 1.5}, "seconds"),
])
def test_a_settle_in_a_unit_the_model_has_no_price_for_is_400_and_charges_nothing(
        api, unit_models, model, usage, field):
    customer = customer_create(purchased_usd=25)
    hold_id = authorize(api, customer, model).json()["hold_id"]
    before = world_snapshot(customer.account_id)
    response = api.post(f"/internal/v1/holds/{hold_id}/settle", usage, format="json")
    assert response.status_code == 400, response.json()
    assert field in response.json()["fields"]
    assert world_snapshot(customer.account_id) == before


@pytest.mark.parametrize(("which", "usage", "fields"), [
    ("open", {"inference_seconds": 3, "input_tokens": 1, "output_tokens": 1},
     {"inference_seconds", "input_tokens"}),
    ("closed", {"input_tokens": 1, "output_tokens": 1, "provider_cost_usd": "0.01"},
     {"input_tokens", "provider_cost_usd"}),
    ("closed", {"provider_cost_usd": "0.01", "images": 1}, {"provider_cost_usd", "images"}),
    ("closed", {"seconds": 1, "requests": 1}, {"seconds", "requests"}),
    ("closed", {"inference_seconds": 1, "seconds": 1}, {"inference_seconds", "seconds"}),
    ("closed", {"load_seconds": 1, "provider_cost_usd": "0.01"},
     {"inference_seconds", "provider_cost_usd"}),
])
def test_a_settle_body_that_mixes_kinds_of_usage_is_400_and_charges_nothing(
        api, unit_models, which, usage, fields):
    customer = customer_create(purchased_usd=25)
    model = MODEL_7B if which == "open" else EVERYTHING
    hold_id = authorize(api, customer, model).json()["hold_id"]
    before = world_snapshot(customer.account_id)
    response = api.post(f"/internal/v1/holds/{hold_id}/settle", usage, format="json")
    assert response.status_code == 400
    body = response.json()
    assert body["code"] == "invalid_request" and set(body["fields"]) == fields
    assert world_snapshot(customer.account_id) == before


@pytest.mark.parametrize(("prices", "field"), [
    ({}, "input_usd_per_mtok"),
    ({"input_usd_per_mtok": "1"}, "output_usd_per_mtok"),
    ({"usd_per_image": "-0.04"}, "usd_per_image"),
    ({"usd_per_second": "0.1.0"}, "usd_per_second"),
    ({"usd_per_request": 0.006}, "usd_per_request"),
    ({"usd_per_image": "0.0000000001"}, "usd_per_image"),
])
def test_a_closed_model_without_a_valid_price_is_400_and_not_stored(api, prices, field):
    response = api.put("/internal/v1/models/acme/bad", {"kind": "closed", "provider": "acme",
                                                       **prices}, format="json")
    assert response.status_code == 400
    assert field in response.json()["fields"]
    assert not InferenceModel.objects.filter(id="acme/bad").exists()
