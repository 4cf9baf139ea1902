"""Customer API keys on /api/v1/: `Authorization: <key>` or `Authorization: Bearer <key>`."""

import redis
from django.conf import settings
from django.utils import timezone
from django_ratelimit.core import get_usage
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import exceptions
from rest_framework.authentication import BaseAuthentication

from accounts.models import ApiKey
from accounts.services import InvalidApiKey, api_key_hash, api_key_touch
from config.api import ApplicationError, RateLimitedError

KEY_GUESSES_GROUP = "customer-key-guesses"


class InsufficientScope(ApplicationError):
    status = 403
    code = "insufficient_scope"
    message = ("This call needs a management key. An inference key runs models and reads "
               "the credit; it never spends money or changes money settings.")


def presented_api_key(request) -> str:
    header = request.META.get("HTTP_AUTHORIZATION", "").strip()
    scheme, _, rest = header.partition(" ")
    return rest.strip() if scheme.lower() == "bearer" else header


class CustomerKeyAuthentication(BaseAuthentication):
    """Authenticates as the key's account user; `request.auth` is the ApiKey."""

    def authenticate(self, request):
        key = presented_api_key(request)
        if not key:
            raise exceptions.NotAuthenticated()
        key_guesses_count(request, increment=False)
        now = timezone.now()
        api_key = (ApiKey.objects.select_related("account__user")
                   .filter(ApiKey.usable_at(now), key_hash=api_key_hash(key)).first())
        if api_key is None:
            key_guesses_count(request, increment=True)
            raise InvalidApiKey()
        api_key_touch(api_key_id=api_key.id, now=now)
        return api_key.account.user, api_key

    def authenticate_header(self, request):
        return "Bearer"


def client_address(group, request) -> str:
    # A WSGI server on a Unix socket (or a test client) may give no address: such callers
    # are counted together rather than refused.
    return request.META.get("REMOTE_ADDR") or "unknown"


def key_guesses_count(request, *, increment: bool) -> None:
    """Invalid keys presented from one client address, counted per minute in the shared
    cache: past the limit every key from that address is refused (429) until the minute
    ends, so a correct guess cannot be told from a wrong one. Keys are random 256-bit
    secrets, so this is a second line: with the cache down it lets calls through rather
    than take the customer API down with it."""
    try:
        usage = get_usage(request, group=KEY_GUESSES_GROUP, key=client_address,
                          increment=increment,
                          rate=f"{settings.CUSTOMER_KEY_GUESSES_PER_MINUTE}/m")
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError):
        return
    if usage is not None and usage["should_limit"]:
        raise RateLimitedError("Too many invalid API keys from this address; retry later.",
                               headers={"Retry-After": str(max(1, usage["time_left"]))})


class CustomerKeyScheme(OpenApiAuthenticationExtension):
    """Documents the customer's API key in the OpenAPI schema (registered on import)."""

    target_class = CustomerKeyAuthentication
    name = "customerApiKey"

    def get_security_definition(self, auto_schema):
        return {"type": "http", "scheme": "bearer",
                "description": "The customer's API key (bk_...)."}
