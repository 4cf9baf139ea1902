from django.contrib import admin
from django.http import HttpResponse
from django.urls import include, path, re_path
from drf_spectacular.views import SpectacularRedocView

from billing.webhooks import stripe_webhook
from config.api import internal_not_found, json_not_found
from config.metrics import webhook_observed
from config.operations import metrics_view, readyz
from config.schema import InternalSchemaApi
from dashboard.views import front_door

# The run path's URLs (metering) first, and /internal/v1/ first of all: Django tries the
# patterns in order, and each one tried before the match is paid on every gateway call.
internal_v1 = [
    path("", include("metering.urls")),
    path("", include("accounts.urls")),
    path("", include("billing.urls")),
    # The description is for the platform's services and for staff signed in to the
    # console with both factors; the readable page sends others to the console's login.
    path("schema", InternalSchemaApi.as_view(), name="internal-schema"),
    # Its assets are the service's own (drf-spectacular-sidecar): readable offline.
    path("docs", admin.site.admin_view(SpectacularRedocView.as_view(
        url_name="internal-schema", template_name="api/redoc.html")),
        name="internal-docs"),
    # Any other path under /internal/v1/, newlines included: 401 without a service
    # token, else the JSON 404.
    re_path(r"^[\s\S]*$", internal_not_found),
]

def healthz(request):
    """Liveness for load balancers: no database, no cache. The benchmark's empty view."""
    return HttpResponse(b"ok", content_type="text/plain")


public_v1 = [
    path("", include("billing.urls_public")),
    path("", include("billing.customer_urls")),
    re_path(r"^[\s\S]*$", json_not_found),
]

urlpatterns = [
    path("internal/v1/", include(internal_v1)),
    # The customer's login (signed in: the overview); staff keep /admin/.
    path("", front_door, name="home"),
    path("account/", include("allauth.urls")),
    path("dashboard/", include("dashboard.urls")),
    path("healthz", healthz, name="healthz"),
    path("readyz", readyz, name="readyz"),
    path("metrics", metrics_view, name="metrics"),
    path("admin/", admin.site.urls),
    re_path(r"^internal/", internal_not_found),
    path("api/v1/", include(public_v1)),
    path("stripe/webhook", webhook_observed(stripe_webhook), name="stripe-webhook"),
]

handler400 = "config.api.handler400"
handler500 = "config.api.handler500"
