"""The run path through the machine handler (config/wsgi.py) and the URLconf, which tries
the gateway's URLs first."""

import json
import uuid

import pytest
from django.urls import get_resolver

from metering.models import Hold
from tests.conftest import INTERNAL_TOKEN
from tests.runpath import authorize_body, customer_create, service_client
from tests.support import wsgi_call

HOLD_ID = str(uuid.uuid4())
AUTHORIZATION = f"Bearer {INTERNAL_TOKEN}"

RUN_PATHS = {
    "/internal/v1/authorize": ("hold-authorize", {}),
    f"/internal/v1/holds/{HOLD_ID}/settle": ("hold-settle", {"hold_id": HOLD_ID}),
    "/internal/v1/holds/not-a-uuid/settle": ("hold-settle", {"hold_id": "not-a-uuid"}),
    "/internal/v1/holds/settle/settle": ("hold-settle", {"hold_id": "settle"}),
    f"/internal/v1/holds/{HOLD_ID}/release": ("hold-release", {"hold_id": HOLD_ID}),
    "/internal/v1/accounts/x": ("account-detail", {"account_id": "x"}),
    "/internal/v1/authorize/": ("", {}),  # the catch-all: the contract's JSON 404
    "/internal/v1/holds/a/b/settle": ("", {}),
}


@pytest.mark.parametrize("path", RUN_PATHS)
def test_the_run_path_resolves_to_its_views(path):
    # when the URLconf resolves a gateway's path
    match = get_resolver().resolve(path)
    # then it is the view the contract names, with the hold id as sent
    url_name, kwargs = RUN_PATHS[path]
    assert (match.url_name or "", match.kwargs if url_name else {}) == (url_name, kwargs)


def test_the_run_path_is_tried_first():
    # given the URLconf's patterns, in the order Django tries them
    patterns = get_resolver().url_patterns
    # then /internal/v1/ is the first, and within it the run path's own (metering's)
    internal = patterns[0]
    assert str(internal.pattern) == "internal/v1/"
    first = internal.url_patterns[0]
    assert [p.name for p in first.url_patterns[:2]] == ["hold-authorize", "hold-settle"]


@pytest.mark.django_db
@pytest.mark.usefixtures("catalog")
def test_authorize_and_settle_through_the_wsgi_entry_point():
    # given a customer
    customer = customer_create(purchased_usd=10)
    # when the gateway authorizes and settles through the entry point the production server serves
    status, headers, content = wsgi_call("POST", "/internal/v1/authorize",
                                         json.dumps(authorize_body(customer)).encode(),
                                         authorization=AUTHORIZATION)
    assert status == "200 OK", content
    hold_id = json.loads(content)["hold_id"]
    status, headers, settled = wsgi_call("POST", f"/internal/v1/holds/{hold_id}/settle",
                                         b'{"inference_seconds": 2}', authorization=AUTHORIZATION)
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
    status, _, content = wsgi_call("POST", path, b'{"inference_seconds": 1}',
                                  authorization=AUTHORIZATION)
    expected = service_client().post(path, {"inference_seconds": 1}, format="json")
    # then both are the contract's 404, byte for byte
    assert status.startswith("404") and expected.status_code == 404
    assert content == expected.content


# --- The short way (config/wsgi.py): the run path's POSTs skip the URLconf and the
# middleware chain's wrappers; every answer must be the whole way's, byte for byte.

@pytest.fixture
def both_ways():
    """Send one request the short way, then the same again the whole way (Django's own
    handler), and return both answers."""
    from config.wsgi import machine_application

    def send(method, path, body=b"", **headers):
        assert machine_application.run_path_short_way
        short = wsgi_call(method, path, body, **headers)
        machine_application.run_path_short_way = False
        try:
            whole = wsgi_call(method, path, body, **headers)
        finally:
            machine_application.run_path_short_way = True
        return short, whole

    return send


@pytest.mark.parametrize("path, short", [
    ("/internal/v1/authorize", True),
    (f"/internal/v1/holds/{HOLD_ID}/settle", True),
    (f"/internal/v1/holds/{HOLD_ID}/release", True),
    (f"/internal/v1/holds/{HOLD_ID}/heartbeat", True),
    ("/internal/v1/holds/not-a-uuid/settle", True),
    ("/internal/v1/authorize/", False),
    ("/internal/v1/holds/a/b/settle", False),
    ("/internal/v1/holds/a.b/settle", False),
    ("/internal/v1/holds/%41/settle", False),
    ("/internal/v1/holds//settle", False),
    (f"/internal/v1/holds/{HOLD_ID}/settle/", False),
    (f"/internal/v1/holds/{HOLD_ID}/expire", False),
    ("/internal/v1/accounts/x", False),
])
def test_the_short_way_takes_only_paths_the_urlconf_sends_to_the_same_view(path, short):
    from config.wsgi import machine_application

    # when the handler looks for a run-path view of its own
    route = machine_application.run_path_view(path)
    # then it finds one only for the run path's own shapes, and the URLconf agrees
    assert (route is not None) == short
    if short:
        view, kwargs = route
        match = get_resolver().resolve(path)
        assert (view, kwargs) == (match.func, match.kwargs)


@pytest.mark.django_db
@pytest.mark.usefixtures("catalog")
@pytest.mark.parametrize("body, headers", [
    (b'{"inference_seconds": 1}', {}),  # no service token: 401
    (b'{"inference_seconds": 1}', {"authorization": "Bearer wrong"}),  # 401
    (b"{not json", {"authorization": AUTHORIZATION}),  # 400
    (b'{"inference_seconds": -1}', {"authorization": AUTHORIZATION}),  # 400, fields
    (b'{"inference_seconds": 1}', {"authorization": AUTHORIZATION}),  # 404: no such hold
    (b'{"inference_seconds": 1}', {"authorization": AUTHORIZATION,
                                   "x_request_id": "gw-7f3a9"}),  # the caller's request id
], ids=["no-token", "bad-token", "bad-json", "bad-field", "unknown-hold", "request-id"])
def test_errors_are_the_same_bytes_both_ways(both_ways, body, headers):
    # given a settle the service refuses
    path = f"/internal/v1/holds/{uuid.uuid4()}/settle"
    # when it is sent the short way and the whole way
    (status, short_headers, content), (status2, whole_headers, content2) = both_ways(
        "POST", path, body, **headers)
    # then the status, the headers and the body are the same (the request id is new
    # each time unless the caller sent one)
    assert status == status2 and status[0] == "4"
    assert content == content2
    if "x_request_id" not in headers:
        short_headers.pop("X-Request-Id"), whole_headers.pop("X-Request-Id")
    assert short_headers == whole_headers
    assert short_headers.get("X-Content-Type-Options") == "nosniff"


@pytest.mark.django_db
@pytest.mark.usefixtures("catalog")
def test_an_authorize_and_its_settle_the_short_way_answer_as_the_whole_way(both_ways):
    # given a customer with credit
    customer = customer_create(purchased_usd=10)
    body = authorize_body(customer)
    # when the same authorize (same request id) goes the short way and then the whole way
    (status, headers, first), (status2, headers2, again) = both_ways(
        "POST", "/internal/v1/authorize", json.dumps(body).encode(),
        authorization=AUTHORIZATION, x_request_id="gw-1")
    # then the second is the replay of the first: the same hold, the same headers
    assert status == status2 == "200 OK", first
    assert json.loads(first)["hold_id"] == json.loads(again)["hold_id"]
    assert headers.keys() == headers2.keys() and headers["X-Request-Id"] == "gw-1"
    # and one hold was made, not two
    assert Hold.objects.filter(account_id=customer.account_id).count() == 1
    # when its settle goes both ways
    hold_id = json.loads(first)["hold_id"]
    (status, headers, settled), (status2, headers2, settled_again) = both_ways(
        "POST", f"/internal/v1/holds/{hold_id}/settle", b'{"inference_seconds": 2}',
        authorization=AUTHORIZATION)
    # then both answer the one settlement, byte for byte
    assert status == status2 == "200 OK" and settled == settled_again
    assert Hold.objects.get(id=hold_id).status == Hold.Status.SETTLED


@pytest.mark.django_db
def test_a_host_not_allowed_is_refused_both_ways_before_any_work(both_ways, settings,
                                                                  monkeypatch):
    # given hosts limited to the service's own name, and a view that must not be reached
    settings.ALLOWED_HOSTS = ["billing.internal"]
    from metering import apis

    def never(*args, **kwargs):
        raise AssertionError("the view ran for a host that is not allowed")

    monkeypatch.setattr(apis.HoldSettleApi, "post", never)
    # when a settle comes for another host
    (status, headers, content), (status2, headers2, content2) = both_ways(
        "POST", f"/internal/v1/holds/{HOLD_ID}/settle", b"{}", authorization=AUTHORIZATION,
        host="evil.example")
    # then it is the same 400 both ways, and no view ran
    assert status == status2 and status.startswith("400")
    assert content == content2
    headers.pop("X-Request-Id"), headers2.pop("X-Request-Id")
    assert headers == headers2


@pytest.mark.django_db
def test_an_unexpected_fault_is_the_contracts_json_500_both_ways(both_ways, monkeypatch,
                                                                   caplog):
    # given a settle that fails in a way nobody planned for
    from metering import apis

    def broken(self, request, hold_id):
        raise RuntimeError("something nobody planned for")

    monkeypatch.setattr(apis.HoldSettleApi, "post", broken)
    # when it is sent both ways
    with caplog.at_level("ERROR", logger="django.request"):
        (status, headers, content), (status2, headers2, content2) = both_ways(
            "POST", f"/internal/v1/holds/{HOLD_ID}/settle", b"{}",
            authorization=AUTHORIZATION, x_request_id="gw-500")
    # then both are the contract's JSON 500 with the caller's request id, never HTML
    assert status == status2 and status.startswith("500")
    assert content == content2 and json.loads(content)["code"] == "internal_error"
    assert headers == headers2
    assert headers["Content-Type"] == "application/json" and headers["X-Request-Id"] == "gw-500"
    # and the fault was logged each time, with its traceback
    faults = [r for r in caplog.records if r.name == "django.request" and r.exc_info]
    assert len(faults) == 2
