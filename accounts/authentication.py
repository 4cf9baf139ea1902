"""Customer API keys on /api/v1/: `Authorization: <key>` or `Authorization: Bearer <key>`."""

from django.utils import timezone
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import exceptions
from rest_framework.authentication import BaseAuthentication

from accounts.models import ApiKey
from accounts.services import InvalidApiKey, api_key_hash, api_key_touch
from config.api import ApplicationError


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
        now = timezone.now()
        api_key = (ApiKey.objects.select_related("account__user")
                   .filter(ApiKey.usable_at(now), key_hash=api_key_hash(key)).first())
        if api_key is None:
            raise InvalidApiKey()
        api_key_touch(api_key_id=api_key.id, now=now)
        return api_key.account.user, api_key

    def authenticate_header(self, request):
        return "Bearer"


class CustomerKeyScheme(OpenApiAuthenticationExtension):
    """Documents the customer's API key in the OpenAPI schema (registered on import)."""

    target_class = CustomerKeyAuthentication
    name = "customerApiKey"

    def get_security_definition(self, auto_schema):
        return {"type": "http", "scheme": "bearer",
                "description": "The customer's API key (bk_...)."}
