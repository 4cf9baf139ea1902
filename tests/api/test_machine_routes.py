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
    # when the gateway authorizes and settles through the entry point gunicorn serves
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
