"""The contract's error body, whatever raised it: `{"status", "error", "code", "message"}`,
with `"fields"` on every 400."""

import json

import pytest
from rest_framework import exceptions

from billing.errors import InsufficientCredit, InvalidExpiry
from config.api import ApplicationError, exception_handler
from metering.catalog import ModelTooLarge
from tests.support import assert_error


def rendered(exc):
    """The response the API sends for `exc`, rendered as JSON."""
    response = exception_handler(exc, {})
    response.data = json.loads(response.content)
    response.json = lambda: json.loads(response.content)
    return response


@pytest.mark.parametrize(("exc", "status", "code"), [
    (InvalidExpiry(), 400, "invalid_request"),
    (ApplicationError(), 400, "invalid_request"),
    (ModelTooLarge("too big", extra={"fields": {"params_b": ["At most 120B."]}}), 400,
     "invalid_request"),
    (exceptions.ParseError("Expecting value"), 400, "invalid_request"),
    (exceptions.ValidationError({"a": ["bad"], "b": {"c": ["worse"]}}), 400, "invalid_request"),
    (exceptions.ValidationError(["not an object"]), 400, "invalid_request"),
    (InsufficientCredit(), 402, "insufficient_credits"),
    (exceptions.NotAuthenticated(), 401, "unauthorized"),
    (exceptions.AuthenticationFailed(), 401, "unauthorized"),
    (exceptions.NotFound(), 404, "not_found"),
    (exceptions.MethodNotAllowed("POST"), 405, "method_not_allowed"),
    (exceptions.UnsupportedMediaType("text/plain"), 415, "unsupported_media_type"),
])
def test_every_error_has_the_contracts_shape(exc, status, code):
    assert_error(rendered(exc), status, code)


def test_a_400_keeps_the_fields_it_names():
    body = assert_error(rendered(exceptions.ValidationError({"a": ["bad"], "b": {"c": ["x"]}})),
                        400, "invalid_request", fields=("a", "b.c"))
    assert body["fields"] == {"a": ["bad"], "b.c": ["x"]}
    body = assert_error(rendered(ModelTooLarge(extra={"fields": {"params_b": ["big"]}})),
                        400, "invalid_request")
    assert body["fields"] == {"params_b": ["big"]}


def test_the_402_keeps_the_platforms_documented_words():
    body = rendered(InsufficientCredit()).data
    assert {k: body[k] for k in ("status", "error", "message")} == {
        "status": 402, "error": "Payment Required",
        "message": "Insufficient credits. Please add credits to continue."}


def test_throttling_says_when_to_retry():
    response = rendered(exceptions.Throttled(wait=2.5))
    assert response.status_code == 429
    assert response.data["code"] == "rate_limited"
    assert response["Retry-After"] == "3"  # rounded up: never retry too early
