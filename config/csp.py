"""The Content-Security-Policy header (django-csp), with Stripe.js allowed where the
payments are: Stripe's own hosts, or the local Stripe stand-in at STRIPE_API_BASE (read on
each response: the tests and `make run` point it at a local server at run time)."""

from urllib.parse import urlsplit

from csp.middleware import CSPMiddleware, PolicyParts
from django.conf import settings

STRIPE_SOURCES = {
    "script-src": ["https://js.stripe.com"],
    "frame-src": ["https://js.stripe.com", "https://hooks.stripe.com"],
    "connect-src": ["https://api.stripe.com"],
}


def stripe_sources() -> dict[str, list[str]]:
    if not settings.STRIPE_API_BASE:
        return STRIPE_SOURCES
    parts = urlsplit(settings.STRIPE_API_BASE)
    origin = f"{parts.scheme}://{parts.netloc}"
    return {"script-src": [origin], "frame-src": [origin], "connect-src": [origin]}


class ContentSecurityPolicyMiddleware(CSPMiddleware):
    def get_policy_parts(self, request, response, report_only: bool = False) -> PolicyParts:
        parts = super().get_policy_parts(request, response, report_only)
        update = dict(parts.update or {})
        for directive, sources in stripe_sources().items():
            update[directive] = [*update.get(directive, []), *sources]
        parts.update = update
        return parts
