"""Every provisioning call needs a valid service token: without one it is answered `401
unauthorized` and writes nothing, whatever the body. Customer API keys are never accepted
as the bearer."""

import pytest
from rest_framework.test import APIClient

from tests.api.provisioning_calls import CALLS, send, world_make
from tests.conftest import INTERNAL_TOKEN
from tests.support import assert_error, wsgi_call

pytestmark = pytest.mark.django_db

CALL_PARAMS = [pytest.param(*call, id=call[0]) for call in CALLS]


@pytest.fixture
def world():
    return world_make()


def bad_headers(world) -> dict[str, str | None]:
    return {
        "missing": None,
        "empty": "",
        "wrong token": "Bearer not-the-token",
        "customer key as bearer": f"Bearer {world.secret}",
        "customer key bare": world.secret,
        "token without scheme": INTERNAL_TOKEN,
        "basic scheme": f"Basic {INTERNAL_TOKEN}",
        "token scheme": f"Token {INTERNAL_TOKEN}",
        "scheme only": "Bearer",
        "scheme and space": "Bearer ",
        "token prefix": f"Bearer {INTERNAL_TOKEN[:-1]}",
        "token extended": f"Bearer {INTERNAL_TOKEN}x",
        "token case changed": f"Bearer {INTERNAL_TOKEN.upper()}",
        "two tokens": f"Bearer {INTERNAL_TOKEN},second-token",
    }


@pytest.mark.parametrize(("name", "method", "path", "body", "status"), CALL_PARAMS)
def test_calls_without_a_valid_service_token_are_unauthorized_and_write_nothing(
        world, name, method, path, body, status):
    for label, header in bad_headers(world).items():
        client = APIClient()
        if header is not None:
            client.credentials(HTTP_AUTHORIZATION=header)
        before = world.snapshot()

        response = send(client, method, path.format(**world.ids), body)

        assert response.status_code == 401, (label, response.content)
        assert_error(response, 401, "unauthorized")
        assert response["WWW-Authenticate"].startswith("Bearer"), label
        assert world.snapshot() == before, label


@pytest.mark.parametrize(("name", "method", "path", "body", "status"), CALL_PARAMS)
@pytest.mark.parametrize("token", [INTERNAL_TOKEN, "second-token"])
def test_any_configured_token_is_accepted(world, name, method, path, body, status, token):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"bearer {token}")
    assert send(client, method, path.format(**world.ids), body).status_code == status


def test_no_token_is_valid_when_none_is_configured(world, api, settings):
    settings.BILLING_INTERNAL_TOKENS = []
    before = world.snapshot()
    assert_error(api.get(f"/internal/v1/accounts/{world.account_id}"), 401, "unauthorized")
    assert_error(api.post("/internal/v1/accounts", {"email": "x@example.com"}, format="json"),
                 401, "unauthorized")
    assert world.snapshot() == before


def test_the_token_is_checked_before_the_body_and_the_ids(world):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION="Bearer wrong")
    before = world.snapshot()
    for response in [
        client.post("/internal/v1/accounts", data="{not json", content_type="application/json"),
        client.get("/internal/v1/accounts/not-a-uuid"),
        client.get("/internal/v1/models/unknown/model"),
        client.put("/internal/v1/models/-bad-id", {"kind": "x"}, format="json"),
        client.post("/internal/v1/accounts/x", {}, format="json"),
    ]:
        assert_error(response, 401, "unauthorized")
    assert world.snapshot() == before


@pytest.mark.parametrize("path", ["/internal/v1/nope", "/internal/v1/accounts/a/b/c",
                                  "/internal/v2/accounts"])
def test_an_unknown_internal_path_is_unauthorized_before_it_is_unknown(anon_api, api, path):
    # Without a token nothing about the paths is told.
    assert_error(anon_api.get(path), 401, "unauthorized")
    assert_error(anon_api.get(path, HTTP_AUTHORIZATION="Bearer wrong"), 401, "unauthorized")
    if path.startswith("/internal/v1/"):
        # With one, the JSON 404.
        assert_error(api.get(path), 404, "not_found")


def test_the_wsgi_entry_point_serves_machine_calls_and_the_docs_page(settings):
    settings.ALLOWED_HOSTS = ["testserver"]
    # Machine calls: the service token, and the contract's errors.
    status, _, body = wsgi_call("GET", "/internal/v1/accounts/" + "0" * 32)
    assert status.startswith("401") and b'"unauthorized"' in body
    status, _, body = wsgi_call("GET", "/internal/v1/schema?format=json",
                                authorization=f"Bearer {INTERNAL_TOKEN}")
    assert status.startswith("200"), (status, body[:200])
    # The docs page is a browser page: the console's login, with the browser middleware.
    status, headers, _ = wsgi_call("GET", "/internal/v1/docs")
    assert status.startswith("302") and headers["Location"].startswith("/admin/login/")
