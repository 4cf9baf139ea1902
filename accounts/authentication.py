"""Customer API keys on /api/v1/: `Authorization: <key>` or `Authorization: Bearer <key>`."""

import time

import redis
from django.conf import settings
from django.core.cache import cache
from django.utils import timezone
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import exceptions
from rest_framework.authentication import BaseAuthentication

from accounts.models import ApiKey
from accounts.services import InvalidApiKey, api_key_hash, api_key_touch
from config.api import ApplicationError, RateLimitedError

# Cache keys of the invalid-key counters: one per client address and minute.
KEY_GUESSES_PREFIX = "key-guesses"


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
        key_guesses_refuse_past_limit(request)
        now = timezone.now()
        api_key = (ApiKey.objects.select_related("account__user")
                   .filter(ApiKey.usable_at(now), key_hash=api_key_hash(key)).first())
        if api_key is None:
            key_guess_count(request)
            raise InvalidApiKey()
        api_key_touch(api_key_id=api_key.id, now=now)
        return api_key.account.user, api_key

    def authenticate_header(self, request):
        return "Bearer"


def _key_guesses_cache_key(request) -> tuple[str, int]:
    """This address's counter for the current minute, and the seconds left in it. A WSGI
    server on a Unix socket (or a test client) may give no address: such callers are
    counted together rather than refused."""
    address = request.META.get("REMOTE_ADDR") or "unknown"
    now = time.time()
    return f"{KEY_GUESSES_PREFIX}:{address}:{int(now // 60)}", 60 - int(now % 60)


def key_guesses_refuse_past_limit(request) -> None:
    """Invalid keys presented from one address are counted per minute in the shared
    cache; once the limit is reached every key from that address is refused (429) until
    the minute ends, so a correct guess cannot be told from a wrong one. Only a read: a
    valid key's call writes nothing. Keys are random 256-bit secrets, so this is a second
    line: with the cache down it lets calls through rather than take the customer API
    down with it."""
    key, seconds_left = _key_guesses_cache_key(request)
    try:
        guesses = cache.get(key, 0)
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError):
        return
    if guesses >= settings.CUSTOMER_KEY_GUESSES_PER_MINUTE:
        raise RateLimitedError("Too many invalid API keys from this address; retry later.",
                               headers={"Retry-After": str(max(1, seconds_left))})


def key_guess_count(request) -> None:
    key, _ = _key_guesses_cache_key(request)
    try:
        cache.add(key, 0, timeout=120)
        cache.incr(key)
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, ValueError):
        return  # the counter expired between the two calls, or the cache is down


class CustomerKeyScheme(OpenApiAuthenticationExtension):
    """Documents the customer's API key in the OpenAPI schema (registered on import)."""

    target_class = CustomerKeyAuthentication
    name = "customerApiKey"

    def get_security_definition(self, auto_schema):
        return {"type": "http", "scheme": "bearer",
                "description": "The customer's API key (bk_...)."}
