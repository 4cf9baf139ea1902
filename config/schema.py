from drf_spectacular.extensions import OpenApiAuthenticationExtension
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


class CustomerKeyScheme(OpenApiAuthenticationExtension):
    """Documents the customer API key of /api/v1/ (registered on import; named by path,
    as config sits below accounts)."""

    target_class = "accounts.authentication.CustomerKeyAuthentication"
    name = "customerKey"

    def get_security_definition(self, auto_schema):
        return {"type": "http", "scheme": "bearer",
                "description": "A customer API key (bk_...), as the dashboard shows it once."}
