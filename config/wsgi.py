"""WSGI entry point.

Machine-to-machine calls (the internal API the gateway calls around every run, and the
health check) have no browser behind them: no session, CSRF token, login, flash message
or frame to protect. They are served by a handler with only MACHINE_MIDDLEWARE, which
saves the browser middleware's work on every gateway call; everything else gets the full
MIDDLEWARE.

The machine handler also resolves the run path's own URLs (settings.MACHINE_DIRECT_ROUTES)
without walking the URLconf: Django tries every pattern before the one that matches, and
for the settle that is dozens of regular expressions on every call. The views and names
are the URLconf's own, read from it once."""

import os
import re
import threading

from django.conf import settings
from django.core.handlers.wsgi import WSGIHandler
from django.core.wsgi import get_wsgi_application
from django.urls import ResolverMatch, get_resolver

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

browser_application = get_wsgi_application()

_PLACEHOLDER = re.compile(r"<(\w+)>")
_SAMPLE = "x"


class DirectRoutes:
    """Paths written as `/internal/v1/holds/<hold_id>/settle`: each `<name>` is one path
    segment (Django's `str` converter, `[^/]+`). A route is only taken when the URLconf
    itself resolves a sample of it to a view capturing exactly those segments; otherwise
    the URLconf answers, as for every other path."""

    def __init__(self, templates):
        self.templates = tuple(templates)
        self.exact: dict[str, ResolverMatch] = {}
        self.patterns: list[tuple[re.Pattern, ResolverMatch]] = []
        self.ready = False
        self.lock = threading.Lock()

    def build(self) -> None:
        resolver = get_resolver()
        for template in self.templates:
            names = _PLACEHOLDER.findall(template)
            sample = _PLACEHOLDER.sub(_SAMPLE, template)
            try:
                match = resolver.resolve(sample)
            except Exception:  # no such view in this build: the URLconf answers
                continue
            if match.args or match.kwargs != dict.fromkeys(names, _SAMPLE):
                continue
            if not names:
                self.exact[template] = match
                continue
            regex = "".join(f"(?P<{part}>[^/]+)" if index % 2 else re.escape(part)
                            for index, part in enumerate(_PLACEHOLDER.split(template)))
            self.patterns.append((re.compile(regex), match))

    def match(self, path: str) -> ResolverMatch | None:
        if not self.ready:
            with self.lock:
                if not self.ready:
                    self.build()
                    self.ready = True
        found = self.exact.get(path)
        if found is not None:
            return found
        for regex, template in self.patterns:
            captured = regex.fullmatch(path)
            if captured is not None:
                match = ResolverMatch.__new__(ResolverMatch)
                match.__dict__.update(template.__dict__)
                match.kwargs = match.captured_kwargs = captured.groupdict()
                return match
        return None


class MachineWSGIHandler(WSGIHandler):
    direct_routes = DirectRoutes(settings.MACHINE_DIRECT_ROUTES)

    def load_middleware(self, is_async=False):
        # Django builds the chain from settings.MIDDLEWARE; build this one from the
        # machine list (at start-up, before any request is served).
        browser_middleware = settings.MIDDLEWARE
        settings.MIDDLEWARE = settings.MACHINE_MIDDLEWARE
        try:
            super().load_middleware(is_async)
        finally:
            settings.MIDDLEWARE = browser_middleware

    def resolve_request(self, request):
        if not hasattr(request, "urlconf"):
            match = self.direct_routes.match(request.path_info)
            if match is not None:
                request.resolver_match = match
                return match
        return super().resolve_request(request)


machine_application = MachineWSGIHandler()
_MACHINE_PREFIXES = settings.MACHINE_PATH_PREFIXES
_BROWSER_PREFIXES = settings.BROWSER_PATH_PREFIXES


def application(environ, start_response):
    path = environ.get("PATH_INFO", "")
    if path.startswith(_MACHINE_PREFIXES) and not path.startswith(_BROWSER_PREFIXES):
        return machine_application(environ, start_response)
    return browser_application(environ, start_response)
