"""API plumbing shared by every app: the contract's error shape, service-token
authentication and the base view for /internal/v1/.

Services raise ApplicationError subclasses; the exception handler renders them (and
DRF's own errors) as `{"status", "error", "code", "message", ...}`."""

import hmac
import sys
import time
from http import HTTPStatus

import django.db
import pydantic
import redis.exceptions
from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.http import Http404, HttpResponse, JsonResponse
from django.utils.dateparse import parse_datetime
from django.views import defaults as django_defaults
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.openapi import AutoSchema
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import exceptions, serializers
from rest_framework.authentication import BaseAuthentication
from rest_framework.permissions import BasePermission
from rest_framework.views import APIView

from config import metrics


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
    if status == 400 and "fields" not in extra:
        # The contract's 400 always says why in "fields".
        extra["fields"] = {"non_field_errors": [message]}
    return {"status": status, "error": HTTPStatus(status).phrase, "code": code,
            "message": message, **extra}


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


class ServiceUnavailable(ApplicationError):
    status = 503
    code = "service_unavailable"
    message = "A service this call needs is unreachable; retry in a moment."

    def __init__(self, message: str | None = None, **kwargs):
        kwargs.setdefault("headers", {"Retry-After": "1"})
        super().__init__(message, **kwargs)


# A dependency that is down or too slow: the caller may retry (by request_id or by hold,
# which is always safe), unlike a bug.
DEPENDENCY_ERRORS: tuple[type[BaseException], ...] = (
    django.db.OperationalError, django.db.InterfaceError, redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
)


class PayloadTooLarge(ApplicationError):
    status = 413
    code = "payload_too_large"
    message = "The body is larger than the service accepts."


def as_application_error(exc: Exception) -> ApplicationError | None:
    """Every error a caller may see, as the one error type the renderer knows; None for a
    bug (the server's 500)."""
    if isinstance(exc, ApplicationError):
        return exc
    if isinstance(exc, pydantic.ValidationError):
        return pydantic_error(exc)
    if isinstance(exc, DEPENDENCY_ERRORS):
        return ServiceUnavailable()
    if isinstance(exc, RequestDataTooBig):
        return PayloadTooLarge(
            f"The body is larger than {settings.DATA_UPLOAD_MAX_MEMORY_SIZE} bytes.")
    if isinstance(exc, exceptions.ValidationError):
        return ApplicationError("The request is invalid.",
                                extra={"fields": _field_errors(exc.detail)})
    if isinstance(exc, exceptions.ParseError):
        return ApplicationError(f"Malformed JSON: {exc.detail}")
    if isinstance(exc, exceptions.UnsupportedMediaType):
        return UnsupportedMediaType()
    if isinstance(exc, exceptions.NotAuthenticated | exceptions.AuthenticationFailed):
        # A 401 names the scheme to use (RFC 9110); the view put it on the exception.
        challenge = getattr(exc, "auth_header", None)
        return Unauthorized(headers={"WWW-Authenticate": challenge} if challenge else None)
    if isinstance(exc, Http404 | exceptions.NotFound):
        return NotFoundError()
    if isinstance(exc, exceptions.MethodNotAllowed):
        return MethodNotAllowedError(str(exc.detail))
    if isinstance(exc, exceptions.Throttled):
        return RateLimitedError(headers={"Retry-After": str(max(int(exc.wait or 1), 1))})
    if isinstance(exc, exceptions.APIException):
        error = ApplicationError(str(exc.detail))
        error.status, error.code = exc.status_code, "error"
        return error
    return None


def application_error_response(exc: ApplicationError) -> JsonResponse:
    """The one renderer of the contract's error shape, for every API of the service."""
    response = JsonResponse(error_body(exc.status, exc.code, exc.message, **exc.extra),
                            status=exc.status)
    for name, value in exc.headers.items():
        response[name] = value
    return response


def _is_machine_path(path: str) -> bool:
    return path.startswith(settings.MACHINE_ERROR_PATH_PREFIXES)


class InternalError(ApplicationError):
    status = 500
    code = "internal_error"
    message = "The service failed; the failure was logged."


def handler400(request, exception=None):
    """Django's bad-request page (a body over the size limit, say): JSON for machines."""
    if not _is_machine_path(request.path):
        return django_defaults.bad_request(request, exception)
    error = as_application_error(exception) if exception is not None else None
    return application_error_response(error or ApplicationError())


def handler500(request):
    """Django's server-error page: for machine callers the contract's JSON, and a 503
    they may retry when a dependency was down, never HTML."""
    if not _is_machine_path(request.path):
        return django_defaults.server_error(request)
    exc = sys.exc_info()[1]
    return application_error_response(
        ServiceUnavailable() if isinstance(exc, DEPENDENCY_ERRORS) else InternalError())


def exception_handler(exc, context):
    """DRF's exception handler: the same errors, rendered the same way."""
    error = as_application_error(exc)
    return None if error is None else application_error_response(error)


def json_not_found(request, *args, **kwargs):
    return JsonResponse(error_body(404, "not_found", "No such endpoint."), status=404)


def internal_not_found(request, *args, **kwargs):
    """An unknown /internal/v1/ path: without a service token, 401 like every other
    internal call (an unauthenticated caller learns nothing about which paths exist)."""
    try:
        service_token_ensure(request)
    except Unauthorized as exc:
        return application_error_response(exc)
    return json_not_found(request)


# --- Input fields: the JSON types the contract writes -------------------------------------


class JsonStringField(serializers.CharField):
    """A JSON string. DRF's CharField also takes a number and makes it text; where the
    contract says string, a number is an ill-typed field."""

    def to_internal_value(self, data):
        if not isinstance(data, str):
            self.fail("invalid")
        return super().to_internal_value(data)


@extend_schema_field(OpenApiTypes.NUMBER)
class JsonNumberField(serializers.DecimalField):
    """A JSON number, read as a Decimal. DRF's DecimalField also parses a string; where the
    contract says number, a string is an ill-typed field."""

    def to_internal_value(self, data):
        if isinstance(data, bool) or not isinstance(data, int | float):
            self.fail("invalid")
        return super().to_internal_value(data)


class AwareDateTimeField(serializers.DateTimeField):
    """An ISO 8601 time that states its timezone, as the contract writes times. DRF would
    read a time without one, or a bare date, as the server's local time."""

    default_error_messages = {"naive": "Must include a timezone, e.g. 2026-11-21T10:00:00Z."}

    def to_internal_value(self, value):
        parsed = super().to_internal_value(value)
        if not isinstance(value, str) or parse_datetime(value).tzinfo is None:
            self.fail("naive")
        return parsed


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


class ServiceTokenScheme(OpenApiAuthenticationExtension):
    """Documents the service token in the OpenAPI schema (registered on import)."""

    target_class = ServiceTokenAuthentication
    name = "serviceToken"

    def get_security_definition(self, auto_schema):
        return {"type": "http", "scheme": "bearer",
                "description": "A service token from BILLING_INTERNAL_TOKENS."}


class IsServiceCaller(BasePermission):
    def has_permission(self, request, view):
        return isinstance(request.user, ServiceCaller)


class IsServiceCallerOrStaff(BasePermission):
    """The API's description: for the platform's services, and for staff signed in to
    the console with both factors (who read it in a browser), as the console itself
    requires. Anyone else gets the contract's 401."""

    def has_permission(self, request, view):
        user = request.user
        if isinstance(user, ServiceCaller) or (
                getattr(user, "is_staff", False) and user.is_active
                and getattr(user, "is_verified", lambda: False)()):
            return True
        raise exceptions.NotAuthenticated()


class InternalAutoSchema(AutoSchema):
    def get_serializer_name(self, serializer, direction):
        """Name a serializer nested in an API after both: AccountCreateApi.InputSerializer
        is "AccountCreateInput". By class name alone every API's input would be "Input",
        and drf-spectacular would document them all as one component."""
        outer, _, inner = type(serializer).__qualname__.rpartition(".")
        if outer:
            return outer.removesuffix("Api") + inner
        return super().get_serializer_name(serializer, direction)


class InternalApi(APIView):
    """Base for /internal/v1/ endpoints: service token required."""

    authentication_classes = [ServiceTokenAuthentication]
    permission_classes = [IsServiceCaller]


# --- The lean base for the run path --------------------------------------------------------


class Unauthorized(ApplicationError):
    status = 401
    code = "unauthorized"
    message = "A valid service token is required."


def service_token_ensure(request) -> None:
    """Raise the contract's 401 unless the request carries a valid service token."""
    scheme, _, token = request.META.get("HTTP_AUTHORIZATION", "").partition(" ")
    if scheme.lower() != "bearer" or not service_token_valid(token.strip()):
        raise Unauthorized(headers={
            "WWW-Authenticate": ServiceTokenAuthentication().authenticate_header(request)})


class MethodNotAllowedError(ApplicationError):
    status = 405
    code = "method_not_allowed"
    message = "Method not allowed."


class UnsupportedMediaType(ApplicationError):
    status = 415
    code = "unsupported_media_type"
    message = "Send the body as application/json."


class RateLimitedError(ApplicationError):
    status = 429
    code = "rate_limited"
    message = "Too many requests."


def pydantic_error(exc) -> ApplicationError:
    """A pydantic ValidationError as the contract's 400 invalid_request."""
    errors = exc.errors(include_url=False)
    if any(error["type"] == "json_invalid" for error in errors):
        detail = errors[0]["msg"].removeprefix("Invalid JSON: ")
        return ApplicationError(f"Malformed JSON: {detail}")
    fields: dict[str, list[str]] = {}
    for error in errors:
        name = ".".join(str(part) for part in error["loc"]) or "non_field_errors"
        message = "This field is required." if error["type"] == "missing" else error["msg"]
        fields.setdefault(name, []).append(message)
    return ApplicationError("The request is invalid.", extra={"fields": fields})


class LeanInternalApi(InternalApi):
    """Base for the run path's endpoints, which the gateway calls before and after every
    run. They skip DRF's per-request machinery (request wrapping, content negotiation,
    parser and renderer classes), which costs more than the work itself: JSON in (validated
    by a pydantic model), JSON out, the same service token and the same error shape. DRF
    still describes them in the OpenAPI schema."""

    def dispatch(self, request, *args, **kwargs):
        started = time.perf_counter()
        outcome = "error"  # an unexpected exception: the 500 is Django's to render
        self.args, self.kwargs, self.request, self.headers = args, kwargs, request, {}
        try:
            service_token_ensure(request)
            method = request.method.lower()
            if method == "options":
                return HttpResponse(status=204, headers={"Allow": ", ".join(
                    name.upper() for name in self.http_method_names if hasattr(self, name))})
            handler = getattr(self, method, None) if method in self.http_method_names else None
            if handler is None:
                raise MethodNotAllowedError(f'Method "{request.method}" not allowed.')
            response = handler(request, *args, **kwargs)
            outcome = "ok"
            return response
        except Exception as exc:
            error = as_application_error(exc)
            if error is None:
                raise
            outcome = error.code
            return application_error_response(error)
        finally:
            metrics.run_path_observe(call=self._metrics_call, started=started,
                                     outcome=outcome)

    _metrics_call = "lean"

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        cls._metrics_call = metrics.run_path_call_name(cls)
