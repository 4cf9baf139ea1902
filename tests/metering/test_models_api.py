"""The model catalog through PUT/GET /models/{model_id}: open models take the smallest size
class at least their size; closed models carry the provider's prices."""

import pytest

from metering.models import InferenceModel
from tests.support import BASE, assert_error, db_counts

pytestmark = pytest.mark.django_db


def url(model_id: str) -> str:
    return f"{BASE}/models/{model_id}"


@pytest.mark.parametrize(("params_b", "size_class", "usd_per_second", "weight"), [
    (0.5, "7B", "0.000072000", 1),
    (7, "7B", "0.000072000", 1),
    (7.001, "15B", "0.000108000", 2),
    (8, "15B", "0.000108000", 2),
    (15, "15B", "0.000108000", 2),
    (34.5, "35B", "0.000144000", 2),
    (70, "70B", "0.000216000", 3),
    (70.5, "120B", "0.000360000", 5),
    (120, "120B", "0.000360000", 5),
])
def test_an_open_model_takes_the_smallest_class_at_least_its_size(
        api, params_b, size_class, usd_per_second, weight):
    model_id = "meta-llama/Llama-3-70b"

    put = api.put(url(model_id), {"kind": "open", "params_b": params_b}, format="json")

    assert put.status_code == 200, put.json()
    body = put.json()
    assert body["id"] == model_id
    assert body["kind"] == "open"
    assert body["params_b"] == params_b
    assert body["size_class"] == {"name": size_class, "usd_per_second": usd_per_second,
                                  "concurrency_weight": weight}
    assert api.get(url(model_id)).json() == body


def test_an_open_model_larger_than_the_largest_class_is_refused(api):
    before = db_counts()

    response = api.put(url("huge/model"), {"kind": "open", "params_b": 120.001}, format="json")

    body = assert_error(response, 400, "invalid_request", fields=("params_b",))
    assert "120" in body["message"]
    assert db_counts() == before
    assert_error(api.get(url("huge/model")), 404, "model_not_found")


def test_a_closed_model_is_stored_with_its_prices(api):
    response = api.put(url("openai/gpt-4o"), {
        "kind": "closed", "provider": "openai", "input_usd_per_mtok": "2.50",
        "output_usd_per_mtok": "10.00"}, format="json")

    assert response.status_code == 200
    body = response.json()
    assert {k: v for k, v in body.items() if k != "updated_at"} == {
        "id": "openai/gpt-4o", "kind": "closed", "provider": "openai",
        "input_usd_per_mtok": "2.500000000", "output_usd_per_mtok": "10.000000000",
        "usd_per_image": None, "usd_per_second": None, "usd_per_request": None}
    model = InferenceModel.objects.get(id="openai/gpt-4o")
    assert (model.input_nanos_per_mtok, model.output_nanos_per_mtok) == (
        2_500_000_000, 10_000_000_000)
    assert model.params_b is None
    assert api.get(url("openai/gpt-4o")).json() == body


def test_a_closed_model_may_be_free(api):
    response = api.put(url("acme/free-tier"), {
        "kind": "closed", "provider": "acme", "input_usd_per_mtok": "0",
        "output_usd_per_mtok": "0.000000001"}, format="json")
    assert response.status_code == 200
    assert response.json()["input_usd_per_mtok"] == "0.000000000"


def test_put_replaces_the_model_and_creates_no_other(api):
    api.put(url("acme/m"), {"kind": "open", "params_b": 7}, format="json")
    before = db_counts()

    # When the same id is put again as a closed model, then as a bigger open one.
    api.put(url("acme/m"), {"kind": "closed", "provider": "acme", "input_usd_per_mtok": "1",
                            "output_usd_per_mtok": "2"}, format="json")
    model = InferenceModel.objects.get(id="acme/m")
    assert (model.kind, model.params_b, model.provider) == ("closed", None, "acme")
    response = api.put(url("acme/m"), {"kind": "open", "params_b": 70}, format="json")

    # Then the last write is what is stored, with no price left over from the closed one.
    body = response.json()
    assert (body["kind"], body["params_b"], body["size_class"]["name"]) == ("open", 70, "70B")
    assert "input_usd_per_mtok" not in body
    model.refresh_from_db()
    assert (model.input_nanos_per_mtok, model.output_nanos_per_mtok, model.provider) == (
        None, None, "")
    assert db_counts() == before


@pytest.mark.parametrize("model_id", [
    "gpt-4o", "meta-llama/Llama-3.1-8B-Instruct", "org/sub/model:v1@2026", "a",
])
def test_model_ids_may_contain_slashes_and_punctuation(api, model_id):
    assert api.put(url(model_id), {"kind": "open", "params_b": 8},
                   format="json").status_code == 200
    assert api.get(url(model_id)).json()["id"] == model_id


def test_a_model_added_by_another_process_runs_at_once(api):
    # Given a process that was just asked for a model nobody had added yet
    from metering.catalog import model_price
    from tests.runpath import customer_create

    assert model_price("late/open-7b") is None

    # When another process adds it (nothing here is told: no cache is cleared)
    InferenceModel.objects.create(id="late/open-7b", kind=InferenceModel.Kind.OPEN,
                                  params_b=7)

    # Then this process runs it on the next call
    customer = customer_create()
    response = api.post("/internal/v1/authorize", {
        "api_key": customer.key, "model": "late/open-7b", "request_id": "r1"}, format="json")
    assert response.status_code == 200, response.content
