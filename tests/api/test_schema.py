"""The internal API's OpenAPI schema is served at /internal/v1/schema and documents the
provisioning calls as they are."""

import pytest
import yaml
from django.test import override_settings

from accounts.models import User
from tests.console.support import otp_login, staff_user
from tests.support import assert_error

pytestmark = pytest.mark.django_db

PROVISIONING = {
    "/internal/v1/accounts": {"post"},
    "/internal/v1/accounts/{account_id}": {"get", "patch"},
    "/internal/v1/accounts/{account_id}/purchases": {"post"},
    "/internal/v1/accounts/{account_id}/api-keys": {"post"},
    "/internal/v1/accounts/{account_id}/api-keys/{key_id}": {"delete"},
    "/internal/v1/accounts/{account_id}/grants": {"post"},
    "/internal/v1/models/{model_id}": {"get", "put"},
}
# What each call's request body takes, as the contract writes it.
REQUEST_FIELDS = {
    ("/internal/v1/accounts", "post"): {"email"},
    ("/internal/v1/accounts/{account_id}", "patch"): {"status", "reason"},
    ("/internal/v1/accounts/{account_id}/purchases", "post"): {"amount_usd", "reference"},
    ("/internal/v1/accounts/{account_id}/api-keys", "post"): {
        "name", "expires_at", "kind", "spend_limit_usd", "spend_limit_period"},
    ("/internal/v1/accounts/{account_id}/grants", "post"): {"amount_usd", "reason",
                                                             "expires_at"},
    ("/internal/v1/models/{model_id}", "put"): {"kind", "params_b", "provider",
                                                "input_usd_per_mtok", "output_usd_per_mtok",
                                                "usd_per_image", "usd_per_second",
                                                "usd_per_request"},
}


@pytest.fixture(scope="module")
def schema():
    from rest_framework.test import APIClient

    from tests.conftest import INTERNAL_TOKEN

    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {INTERNAL_TOKEN}")
    with override_settings(BILLING_INTERNAL_TOKENS=[INTERNAL_TOKEN]):
        response = client.get("/internal/v1/schema?format=json")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("application/vnd.oai.openapi+json")
    return response.json()


def resolve(schema: dict, node: dict) -> dict:
    ref = node.get("$ref")
    return resolve(schema, schema["components"]["schemas"][ref.rsplit("/", 1)[1]]) if ref else node


def test_the_schema_lists_every_provisioning_call(schema):
    assert schema["openapi"].startswith("3.")
    paths = {path: set(ops) - {"parameters"} for path, ops in schema["paths"].items()}
    for path, methods in PROVISIONING.items():
        assert methods <= paths.get(path, set()), (path, paths.get(path))


@pytest.mark.parametrize(("path", "method"), list(REQUEST_FIELDS))
def test_each_call_documents_its_own_request_body(schema, path, method):
    body = schema["paths"][path][method]["requestBody"]["content"]["application/json"]
    assert set(resolve(schema, body["schema"])["properties"]) == REQUEST_FIELDS[(path, method)]


def test_every_call_requires_the_service_token(schema):
    assert schema["components"]["securitySchemes"]["serviceToken"] == {
        "type": "http", "scheme": "bearer",
        "description": "A service token from BILLING_INTERNAL_TOKENS."}
    for path, methods in PROVISIONING.items():
        for method in methods:
            assert schema["paths"][path][method]["security"] == [{"serviceToken": []}]


def test_money_is_documented_as_a_string_and_sizes_as_a_number(schema):
    put = schema["paths"]["/internal/v1/models/{model_id}"]["put"]
    fields = resolve(schema, put["requestBody"]["content"]["application/json"]["schema"])
    assert fields["properties"]["input_usd_per_mtok"]["type"] == "string"
    assert fields["properties"]["params_b"]["type"] == "number"


def test_the_schema_is_also_served_as_yaml(api):
    response = api.get("/internal/v1/schema")
    assert response.status_code == 200
    assert set(PROVISIONING) <= set(yaml.safe_load(response.content)["paths"])


def test_the_schema_is_not_served_without_a_service_token(anon_api):
    assert_error(anon_api.get("/internal/v1/schema"), 401, "unauthorized")
    assert_error(anon_api.get("/internal/v1/schema", HTTP_AUTHORIZATION="Bearer wrong"), 401,
                 "unauthorized")


def test_staff_signed_in_to_the_console_read_the_schema_and_its_page(client):
    # Given someone not signed in: the readable page sends them to the console's login.
    docs = client.get("/internal/v1/docs")
    assert docs.status_code == 302 and docs["Location"].startswith("/admin/login/")

    # A customer signed in is not staff: no schema.
    customer = User.objects.create_user(email="customer@example.com", password="pw-cust-1")
    client.force_login(customer)
    assert client.get("/internal/v1/schema").status_code == 401

    # Staff with a password only (not through the console's second factor): neither,
    # as the console itself would not let them in.
    staff = staff_user("staff@example.com")
    client.force_login(staff)
    docs = client.get("/internal/v1/docs")
    assert docs.status_code == 302 and docs["Location"].startswith("/admin/login/")
    assert_error(client.get("/internal/v1/schema?format=json"), 401, "unauthorized")

    # Staff signed in with both factors read both.
    otp_login(client, staff)
    assert client.get("/internal/v1/docs").status_code == 200
    schema = client.get("/internal/v1/schema?format=json")
    assert schema.status_code == 200
    assert set(PROVISIONING) <= set(schema.json()["paths"])


def operations(schema):
    for path, ops in schema["paths"].items():
        for method, operation in ops.items():
            if method != "parameters":
                yield path, method, operation


def test_every_call_documents_the_contracts_error_body(schema):
    error = schema["components"]["schemas"]["Error"]
    assert set(error["required"]) == {"status", "error", "code", "message"}
    for path, method, operation in operations(schema):
        responses = operation["responses"]
        for status in ("401", "503"):
            assert responses[status]["content"]["application/json"]["schema"] == {
                "$ref": "#/components/schemas/Error"}, (path, method, status)
        if "{" in path:
            assert "404" in responses, (path, method)
        if operation.get("requestBody"):
            assert "400" in responses, (path, method)


def test_the_run_path_documents_its_refusals(schema):
    authorize = schema["paths"]["/internal/v1/authorize"]["post"]["responses"]
    assert {"200", "400", "401", "402", "403", "404", "429", "503"} <= set(authorize)
    for action in ("settle", "release", "heartbeat"):
        responses = schema["paths"][f"/internal/v1/holds/{{hold_id}}/{action}"]["post"][
            "responses"]
        assert {"200", "404", "409"} <= set(responses), action


def test_the_customer_api_documents_its_key_and_what_it_answers(schema):
    assert schema["components"]["securitySchemes"]["customerApiKey"]["scheme"] == "bearer"
    customer_calls = [(path, method, operation) for path, method, operation
                      in operations(schema) if path.startswith("/api/v1/")]
    assert customer_calls
    for path, method, operation in customer_calls:
        assert operation["security"] == [{"customerApiKey": []}], (path, method)
    cancel = schema["paths"]["/api/v1/subscription"]["delete"]["responses"]
    assert "200" in cancel and "204" not in cancel  # it answers with the plan, not empty
