"""WSGI entry point.

Machine-to-machine calls (the internal API the gateway calls around every run, and the
health check) have no browser behind them: no session, CSRF token, login, flash message
or frame to protect. They are served by a handler with only MACHINE_MIDDLEWARE, which
saves the browser middleware's work on every gateway call; everything else gets the full
MIDDLEWARE.

The run path's URLs come first in the URLconf (config/urls.py): Django tries the
patterns in order, and every one tried before the match costs each gateway call."""

import os

from django.conf import settings
from django.core.handlers.wsgi import WSGIHandler
from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

browser_application = get_wsgi_application()

class MachineWSGIHandler(WSGIHandler):
    def load_middleware(self, is_async=False):
        # Django builds the chain from settings.MIDDLEWARE; build this one from the
        # machine list (at start-up, before any request is served).
        browser_middleware = settings.MIDDLEWARE
        settings.MIDDLEWARE = settings.MACHINE_MIDDLEWARE
        try:
            super().load_middleware(is_async)
        finally:
            settings.MIDDLEWARE = browser_middleware


machine_application = MachineWSGIHandler()
_MACHINE_PREFIXES = settings.MACHINE_PATH_PREFIXES
_BROWSER_PREFIXES = settings.BROWSER_PATH_PREFIXES


def application(environ, start_response):
    path = environ.get("PATH_INFO", "")
    if path.startswith(_MACHINE_PREFIXES) and not path.startswith(_BROWSER_PREFIXES):
        return machine_application(environ, start_response)
    return browser_application(environ, start_response)
