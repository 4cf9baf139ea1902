import re

from drf_spectacular.views import SpectacularAPIView
from rest_framework.authentication import SessionAuthentication
from rest_framework.renderers import JSONRenderer

from config.api import IsServiceCallerOrStaff, ServiceTokenAuthentication


class InternalSchemaApi(SpectacularAPIView):
    """The OpenAPI schema of the service's APIs (YAML, or JSON with ?format=json)."""

    authentication_classes = [ServiceTokenAuthentication, SessionAuthentication]
    permission_classes = [IsServiceCallerOrStaff]

    def handle_exception(self, exc):
        # Errors are the contract's JSON, not a document in the schema's format.
        self.request.accepted_renderer = JSONRenderer()
        self.request.accepted_media_type = JSONRenderer.media_type
        return super().handle_exception(exc)


# --- What the schema says about errors -------------------------------------------------------
# Every call can fail; a client (and a conformance checker) must see how. Each operation
# documents the contract's error body for the statuses it can answer: those every call has,
# those its path parameters and body add, and those the contract names for the call.

ERROR_SCHEMA = {
    "type": "object",
    "required": ["status", "error", "code", "message"],
    "properties": {
        "status": {"type": "integer", "description": "The HTTP status, again."},
        "error": {"type": "string", "description": "The status's reason phrase."},
        "code": {"type": "string", "description": "What went wrong, for programs."},
        "message": {"type": "string", "description": "What went wrong, for people."},
        "fields": {"type": "object", "additionalProperties": {
            "type": "array", "items": {"type": "string"}},
            "description": "On every 400: each field that is wrong, with why."},
    },
    "additionalProperties": True,
}

ERROR_DESCRIPTIONS = {
    400: "The request is invalid (`fields` says why); nothing was changed.",
    401: "No valid credentials.",
    402: "Not enough credit (or a key's spend limit): the body says how much.",
    403: "Not allowed: the account is suspended, the tier does not unlock the model, or "
         "the key may not do this.",
    404: "No such object (or not this account's).",
    405: "Method not allowed.",
    409: "Conflict: the hold is settled, released or expired; an Idempotency-Key was used "
         "for another purchase (or its purchase is still being made); the account already "
         "has a live subscription.",
    413: "The body is too large.",
    415: "The body is not JSON.",
    429: "Too many runs or requests: retry after Retry-After.",
    502: "The payment provider refused or failed the call (`payment_provider_error`).",
    503: "A dependency is unreachable: retry after Retry-After (retries are safe).",
}

# Statuses the contract names for particular calls, beyond what every call can answer.
CALL_ERRORS = [
    (re.compile(r"/internal/v1/authorize$"), {402, 403, 404, 429}),
    (re.compile(r"/internal/v1/holds/\{[^}]+\}/(settle|release|heartbeat)$"), {409}),
    (re.compile(r"/api/v1/(cards|purchases|auto-reload|auto-scale|subscription)"), {402, 403}),
    (re.compile(r"/api/v1/"), {429}),  # too many invalid keys from one address
    # Calls that reach Stripe: its refusals and failures.
    (re.compile(r"/api/v1/(cards|purchases|subscription)"), {502}),
    # A card_id not on the account; an Idempotency-Key reused or still in flight.
    (re.compile(r"/api/v1/purchases$"), {404, 409}),
    (re.compile(r"/api/v1/subscription$"), {404, 409}),  # none live; already subscribed
    (re.compile(r"/api/v1/auto-reload$"), {404}),  # a card_id not on the account
    (re.compile(r"/internal/v1/accounts/\{[^}]+\}/purchases$"), {403}),
]


def error_responses_hook(result, generator, request, public):
    """drf-spectacular postprocessing: the error body, and which calls answer which."""
    result.setdefault("components", {}).setdefault("schemas", {})["Error"] = ERROR_SCHEMA
    for path, operations in result.get("paths", {}).items():
        for method, operation in operations.items():
            if method == "parameters":
                continue
            statuses = {401, 405, 503}
            if operation.get("requestBody") or operation.get("parameters"):
                statuses |= {400}
            if operation.get("requestBody"):
                statuses |= {413, 415}
            if "{" in path:
                statuses |= {404}
            for pattern, extra in CALL_ERRORS:
                if pattern.search(path):
                    statuses |= extra
            responses = operation.setdefault("responses", {})
            for status in sorted(statuses):
                responses.setdefault(str(status), {
                    "description": ERROR_DESCRIPTIONS[status],
                    "content": {"application/json": {
                        "schema": {"$ref": "#/components/schemas/Error"}}},
                })
    return result


# --- Links: what a response's ids lead to --------------------------------------------------
# A client (and a stateful fuzzer) can follow an authorize's hold to its settle, release
# and heartbeat, and a new account to its reads and keys.

LINKS = [
    # (operation answering, its status, field of its body, operation it leads to, parameter)
    ("post", "/internal/v1/authorize", "200", "hold_id",
     [("post", "/internal/v1/holds/{hold_id}/settle"),
      ("post", "/internal/v1/holds/{hold_id}/release"),
      ("post", "/internal/v1/holds/{hold_id}/heartbeat")]),
    ("post", "/internal/v1/accounts", "201", "account_id",
     [("get", "/internal/v1/accounts/{account_id}"),
      ("post", "/internal/v1/accounts/{account_id}/api-keys"),
      ("post", "/internal/v1/accounts/{account_id}/grants")]),
]


def links_hook(result, generator, request, public):
    """drf-spectacular postprocessing: OpenAPI links from an id in a response to the calls
    that take it in their path."""
    paths = result.get("paths", {})
    for method, path, status, field, targets in LINKS:
        response = paths.get(path, {}).get(method, {}).get("responses", {}).get(status)
        if response is None:
            continue
        for target_method, target_path in targets:
            target = paths.get(target_path, {}).get(target_method)
            if target is None or "operationId" not in target:
                continue
            response.setdefault("links", {})[target["operationId"]] = {
                "operationId": target["operationId"],
                "parameters": {field: f"$response.body#/{field}"},
            }
    return result
