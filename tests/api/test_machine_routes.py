"""The machine handler's direct routes (config/wsgi.py): the run path's URLs resolved
without walking the URLconf, to exactly what the URLconf resolves them to."""

import json
import uuid
from io import BytesIO

import pytest
from django.core.signals import request_finished, request_started
from django.db import close_old_connections
from django.urls import Resolver404, get_resolver

from config.wsgi import MachineWSGIHandler, application
from metering.models import Hold
from tests.conftest import INTERNAL_TOKEN
from tests.runpath import authorize_body, customer_create, service_client

RUN_PATHS = [
    "/internal/v1/authorize",
    f"/internal/v1/holds/{uuid.uuid4()}/settle",
    "/internal/v1/holds/not-a-uuid/settle",
    "/internal/v1/holds/a b%20c/settle",
    "/internal/v1/holds/settle/settle",
]
OTHER_PATHS = [
    "/internal/v1/authorize/",
    "/internal/v1/authorizex",
    "/internal/v1/holds//settle",
    "/internal/v1/holds/a/b/settle",
    "/internal/v1/holds/x/settle/",
    f"/internal/v1/holds/{uuid.uuid4()}/release",
    f"/internal/v1/holds/{uuid.uuid4()}/heartbeat",
    "/internal/v1/accounts/x",
    "/healthz",
]


@pytest.mark.parametrize("path", RUN_PATHS)
def test_a_direct_route_resolves_as_the_urlconf_does(path):
    # given the URLconf's own answer
    expected = get_resolver().resolve(path)
    # when the machine handler resolves the path directly
    found = MachineWSGIHandler.direct_routes.match(path)
    # then it is the same view, with the same captured segments and names
    assert found is not None
    assert (found.func, found.args, found.kwargs, found.url_name, found.view_name,
            found.route, found.captured_kwargs) == (
        expected.func, expected.args, expected.kwargs, expected.url_name,
        expected.view_name, expected.route, expected.captured_kwargs)


@pytest.mark.parametrize("path", OTHER_PATHS)
def test_any_other_path_is_left_to_the_urlconf(path):
    # when the machine handler looks for a direct route
    found = MachineWSGIHandler.direct_routes.match(path)
    # then there is none: the URLconf resolves it (or answers 404) as before
    assert found is None
    try:
        expected = get_resolver().resolve(path)
    except Resolver404:
        return
    assert expected.url_name not in {"hold-authorize", "hold-settle"} or path.endswith("/")


def test_a_direct_match_is_not_shared_between_requests():
    # given two settle paths
    first = MachineWSGIHandler.direct_routes.match("/internal/v1/holds/one/settle")
    second = MachineWSGIHandler.direct_routes.match("/internal/v1/holds/two/settle")
    # then each request gets its own match, with its own hold id
    assert first.kwargs == {"hold_id": "one"} and second.kwargs == {"hold_id": "two"}


def _wsgi_post(path: str, body: bytes) -> tuple[str, dict, bytes]:
    environ = {"REQUEST_METHOD": "POST", "PATH_INFO": path, "QUERY_STRING": "",
               "SERVER_NAME": "testserver", "SERVER_PORT": "80",
               "SERVER_PROTOCOL": "HTTP/1.1", "HTTP_HOST": "testserver",
               "HTTP_AUTHORIZATION": f"Bearer {INTERNAL_TOKEN}",
               "CONTENT_TYPE": "application/json", "CONTENT_LENGTH": str(len(body)),
               "wsgi.input": BytesIO(body), "wsgi.url_scheme": "http",
               "wsgi.errors": BytesIO(), "wsgi.multithread": True,
               "wsgi.multiprocess": True, "wsgi.run_once": False, "wsgi.version": (1, 0)}
    answer = {}

    def start_response(status, response_headers, exc_info=None):
        answer["status"], answer["headers"] = status, dict(response_headers)

    # As Django's test client does: the test's connection (in its transaction) must
    # outlive the request.
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    try:
        response = application(environ, start_response)
        content = b"".join(response)
        response.close()
    finally:
        request_started.connect(close_old_connections)
        request_finished.connect(close_old_connections)
    return answer["status"], answer["headers"], content


@pytest.mark.django_db
@pytest.mark.usefixtures("catalog")
def test_authorize_and_settle_through_the_wsgi_entry_point():
    # given a customer
    customer = customer_create(purchased_usd=10)
    # when the gateway authorizes and settles through the entry point gunicorn serves
    status, headers, content = _wsgi_post(
        "/internal/v1/authorize", json.dumps(authorize_body(customer)).encode())
    assert status == "200 OK", content
    hold_id = json.loads(content)["hold_id"]
    status, headers, settled = _wsgi_post(f"/internal/v1/holds/{hold_id}/settle",
                                          b'{"inference_seconds": 2}')
    # then both answer as the URLconf's views do, headers included
    assert status == "200 OK", settled
    assert headers["Content-Type"] == "application/json"
    assert headers["Content-Length"] == str(len(settled))
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["X-Request-Id"]
    assert Hold.objects.get(id=hold_id).status == Hold.Status.SETTLED
    # and settling again through the test client (the URLconf) answers the same bytes
    again = service_client().post(f"/internal/v1/holds/{hold_id}/settle",
                                  {"inference_seconds": 2}, format="json")
    assert again.status_code == 200 and again.content == settled


@pytest.mark.django_db
def test_an_unknown_hold_is_the_same_404_either_way():
    # given a hold id that does not exist
    path = f"/internal/v1/holds/{uuid.uuid4()}/settle"
    # when it is settled through the entry point and through the test client
    status, _, content = _wsgi_post(path, b'{"inference_seconds": 1}')
    expected = service_client().post(path, {"inference_seconds": 1}, format="json")
    # then both are the contract's 404, byte for byte
    assert status.startswith("404") and expected.status_code == 404
    assert content == expected.content
