"""The access log (config/wsgi.py, on under deploy/serve.py): one line per request with
what the response carried, whatever happens while the response is closed."""

import logging

import pytest
from django.core.signals import request_finished

from config import wsgi
from tests.conftest import INTERNAL_TOKEN
from tests.support import wsgi_call

pytestmark = pytest.mark.django_db


@pytest.fixture
def access_logged(monkeypatch, settings, caplog):
    settings.ALLOWED_HOSTS = ["testserver"]
    # The application as deploy/serve.py's workers load it (ACCESS_LOG=1).
    monkeypatch.setattr(wsgi, "application", wsgi._served_and_logged)
    caplog.set_level(logging.INFO, logger="billing.access")

    def lines():
        return [record for record in caplog.records if record.name == "billing.access"]

    return lines


def test_a_request_writes_one_line_with_the_id_and_size_it_answered_with(access_logged):
    status, headers, body = wsgi_call("POST", "/internal/v1/holds/nope/release", b"{}",
                                      authorization=f"Bearer {INTERNAL_TOKEN}",
                                      x_request_id="gw-123")

    assert status.startswith("404")
    [line] = access_logged()
    assert (line.method, line.path, line.status, line.bytes, line.request_id) == \
        ("POST", "/internal/v1/holds/nope/release", 404, len(body), "gw-123")
    assert headers["X-Request-Id"] == "gw-123"


def test_a_head_request_counts_no_body_sent(access_logged):
    status, _, _ = wsgi_call("HEAD", "/healthz")

    assert status.startswith("200")
    [line] = access_logged()
    assert (line.method, line.status, line.bytes) == ("HEAD", 200, 0)


def test_a_fault_while_closing_keeps_the_answer_and_its_line(access_logged, caplog):
    # Given a receiver of request_finished that fails (closing the response runs it)
    def broken(**kwargs):
        raise RuntimeError("receiver failed")

    request_finished.connect(broken, dispatch_uid="test-broken-receiver")
    try:
        status, _, body = wsgi_call("GET", "/healthz")
    finally:
        request_finished.disconnect(dispatch_uid="test-broken-receiver")

    # Then the answer stands, the fault is logged, and the request has its line
    assert (status, body) == ("200 OK", b"ok")
    assert any(record.name == "config.wsgi" and record.exc_info
               and "receiver failed" in str(record.exc_info[1]) for record in caplog.records)
    [line] = access_logged()
    assert (line.status, line.bytes) == (200, 2)
