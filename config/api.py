"""API plumbing shared by every app: the contract's error shape, service-token
authentication and the base view for /internal/v1/.

Services raise ApplicationError subclasses; the exception handler renders them (and
DRF's own errors) as `{"status", "error", "code", "message", ...}`."""

import hmac
from http import HTTPStatus

from django.conf import settings
from django.http import Http404, JsonResponse
from rest_framework import exceptions
from rest_framework.authentication import BaseAuthentication
from rest_framework.permissions import BasePermission
from rest_framework.response import Response
from rest_framework.views import APIView


class ApplicationError(Exception):
    """A refusal the caller can act on. Subclasses set status, code and message."""

    status: int = 400
    code: str = "invalid_request"
    message: str = "The request is invalid."

    def __init__(self, message: str | None = None, *, extra: dict | None = None,
                 headers: dict | None = None):
        super().__init__(message or self.message)
        if message:
            self.message = message
        self.extra = extra or {}
        self.headers = headers or {}


class NotFoundError(ApplicationError):
    status = 404
    code = "not_found"
    message = "Not found."


def error_body(status: int, code: str, message: str, **extra) -> dict:
    return {"status": status, "error": HTTPStatus(status).phrase, "code": code,
            "message": message, **extra}


def error_response(status: int, code: str, message: str, *, headers=None, **extra):
    return Response(error_body(status, code, message, **extra), status=status,
                    headers=headers)


def _field_errors(detail) -> dict[str, list[str]]:
    if isinstance(detail, dict):
        fields: dict[str, list[str]] = {}
        for name, errors in detail.items():
            if isinstance(errors, dict):
                for sub, sub_errors in _field_errors(errors).items():
                    # A nested object that is wrong as a whole ("estimate": 60) names
                    # the object itself.
                    path = name if sub == "non_field_errors" else f"{name}.{sub}"
                    fields.setdefault(path, []).extend(sub_errors)
            elif isinstance(errors, list):
                fields[name] = [str(e) for e in errors]
            else:
                fields[name] = [str(errors)]
        return fields
    if isinstance(detail, list):
        return {"non_field_errors": [str(e) for e in detail]}
    return {"non_field_errors": [str(detail)]}


def exception_handler(exc, context):
    if isinstance(exc, ApplicationError):
        return error_response(exc.status, exc.code, exc.message, headers=exc.headers,
                              **exc.extra)
    if isinstance(exc, exceptions.ValidationError):
        return error_response(400, "invalid_request", "The request is invalid.",
                              fields=_field_errors(exc.detail))
    if isinstance(exc, exceptions.ParseError):
        return error_response(400, "invalid_request", f"Malformed JSON: {exc.detail}")
    if isinstance(exc, exceptions.UnsupportedMediaType):
        return error_response(415, "unsupported_media_type",
                              "Send the body as application/json.")
    if isinstance(exc, exceptions.NotAuthenticated | exceptions.AuthenticationFailed):
        return error_response(401, "unauthorized", "A valid service token is required.")
    if isinstance(exc, Http404 | exceptions.NotFound):
        return error_response(404, "not_found", "Not found.")
    if isinstance(exc, exceptions.MethodNotAllowed):
        return error_response(405, "method_not_allowed", str(exc.detail))
    if isinstance(exc, exceptions.Throttled):
        wait = int(exc.wait or 1)
        return error_response(429, "rate_limited", "Too many requests.",
                              headers={"Retry-After": str(max(wait, 1))})
    if isinstance(exc, exceptions.APIException):
        return error_response(exc.status_code, "error", str(exc.detail))
    return None


def json_not_found(request, *args, **kwargs):
    return JsonResponse(error_body(404, "not_found", "No such endpoint."), status=404)


# --- Service-token authentication ---------------------------------------------------------


class ServiceCaller:
    """The authenticated principal of an /internal/v1/ call: a platform service."""

    is_authenticated = True


def service_token_valid(presented: str) -> bool:
    # Compare against every configured token, without stopping early, in constant time.
    presented_bytes = presented.encode()
    valid = False
    for token in settings.BILLING_INTERNAL_TOKENS:
        valid |= hmac.compare_digest(presented_bytes, token.encode())
    return valid


class ServiceTokenAuthentication(BaseAuthentication):
    def authenticate(self, request):
        header = request.META.get("HTTP_AUTHORIZATION", "")
        if not header:
            return None
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token or not service_token_valid(token.strip()):
            raise exceptions.AuthenticationFailed()
        return ServiceCaller(), token

    def authenticate_header(self, request):
        return 'Bearer realm="internal"'


class IsServiceCaller(BasePermission):
    def has_permission(self, request, view):
        return isinstance(request.user, ServiceCaller)


class InternalApi(APIView):
    """Base for /internal/v1/ endpoints: service token required."""

    authentication_classes = [ServiceTokenAuthentication]
    permission_classes = [IsServiceCaller]
