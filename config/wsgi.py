"""WSGI entry point.

Machine-to-machine calls (the internal API the gateway calls around every run, and the
health check) have no browser behind them: no session, CSRF token, login, flash message
or frame to protect. They are served by a handler with only MACHINE_MIDDLEWARE, which
saves the browser middleware's work on every gateway call; everything else gets the full
MIDDLEWARE.

The run path's POSTs (authorize, and settle, release and heartbeat of a hold whose id is
a plain token) take a shorter way through that handler's middleware chain: the view is
found by one regular expression instead of the URLconf, and the machine middleware's
own hooks are called in the chain's order instead of through Django's nested wrappers.
The rest is Django's handler as it is (the request signals, the 4xx/5xx log), and the
chain's work is kept in its order: the request id, the security and common middleware,
a view's exception answered by handler500. Any other request, a hold id with
anything unusual in it included, goes the whole way. tests/api/test_machine_routes.py
sends the same requests both ways and compares the answers byte for byte.

The run path's URLs also come first in the URLconf (config/urls.py), for the requests
that go the whole way."""

import logging
import os
import re
import time

from django.conf import settings
from django.core.handlers.exception import response_for_exception
from django.core.handlers.wsgi import WSGIHandler
from django.core.wsgi import get_wsgi_application
from django.middleware.common import CommonMiddleware
from django.middleware.security import SecurityMiddleware
from django.urls import get_resolver

from config.logs import access_line, request_id_begin

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
logger = logging.getLogger(__name__)

browser_application = get_wsgi_application()

# The run path's POSTs served on the short way: a subset of what the URLconf sends to the
# same views (a hold id of letters, digits and dashes, as every hold id is).
RUN_PATH_RE = re.compile(
    r"/internal/v1/(?:authorize|holds/(?P<hold_id>[0-9A-Za-z-]{1,64})/"
    r"(?P<action>settle|release|heartbeat))")
RUN_PATH_MIDDLEWARE = [
    "config.logs.RequestIdMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "django.middleware.common.CommonMiddleware",
]
_RUN_PATH_SAMPLES = {None: "/internal/v1/authorize",
                     "settle": "/internal/v1/holds/h/settle",
                     "release": "/internal/v1/holds/h/release",
                     "heartbeat": "/internal/v1/holds/h/heartbeat"}


def _unused_get_response(request):
    raise AssertionError("the short way calls the middleware's hooks, never its chain")


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
        # Django's own __call__ and get_response stay (signals, the request, the 4xx/5xx
        # log, the status line); only the chain they call picks the short way.
        self._whole_chain = self._middleware_chain
        self._middleware_chain = self._machine_chain
        self._run_path_views = None
        # The short way calls these middlewares' hooks itself, so it is taken only while
        # the machine chain is exactly them (else every request goes the whole way).
        self.run_path_short_way = list(settings.MACHINE_MIDDLEWARE) == RUN_PATH_MIDDLEWARE
        self._security = SecurityMiddleware(_unused_get_response)
        self._common = CommonMiddleware(_unused_get_response)

    def run_path_view(self, path: str):
        """The view and its arguments for a run-path POST on the short way, or None."""
        match = RUN_PATH_RE.fullmatch(path) if self.run_path_short_way else None
        if match is None:
            return None
        if self._run_path_views is None:
            # The URLconf's own views, found once: the same callables it resolves to.
            resolver = get_resolver(settings.ROOT_URLCONF)
            self._run_path_views = {action: resolver.resolve(sample).func
                                    for action, sample in _RUN_PATH_SAMPLES.items()}
        hold_id = match["hold_id"]
        return (self._run_path_views[match["action"]],
                {} if hold_id is None else {"hold_id": hold_id})

    def _machine_chain(self, request):
        """The middleware chain Django's handler calls (get_response, inside __call__):
        the short way for a run-path POST, else the whole machine chain."""
        route = self.run_path_view(request.path_info) if request.method == "POST" else None
        if route is None:
            return self._whole_chain(request)
        return self._run_path_response(request, *route)

    def _run_path_response(self, request, view, kwargs):
        """What the machine chain answers: RequestIdMiddleware around SecurityMiddleware
        around CommonMiddleware around the view, an exception at any level answered there
        (as Django's convert_exception_to_response does) and passed outwards."""
        request_id = request_id_begin(request)
        try:
            response = self._security.process_request(request)
            if response is None:
                response = self._common_and_view(request, view, kwargs)
            response = self._security.process_response(request, response)
        except Exception as exc:
            response = response_for_exception(request, exc)
        response["X-Request-Id"] = request_id
        return response

    def _common_and_view(self, request, view, kwargs):
        try:
            response = self._common.process_request(request)
            if response is None:
                try:
                    response = view(request, **kwargs)
                except Exception as exc:
                    response = response_for_exception(request, exc)
            return self._common.process_response(request, response)
        except Exception as exc:
            return response_for_exception(request, exc)


machine_application = MachineWSGIHandler()
_MACHINE_PREFIXES = settings.MACHINE_PATH_PREFIXES
_BROWSER_PREFIXES = settings.BROWSER_PATH_PREFIXES


def _handler(environ) -> WSGIHandler:
    path = environ.get("PATH_INFO", "")
    if path.startswith(_MACHINE_PREFIXES) and not path.startswith(_BROWSER_PREFIXES):
        return machine_application
    return browser_application


def _whole(response):
    """A response whose body is already in memory as one list of bytes, closed: the
    server then writes it in one go (granian copies a list at once, but iterates anything
    else chunk by chunk, calling back into Python). Closing it ends Django's request
    (request_finished) as the server's close() would have. A streamed body is left as
    it is."""
    if getattr(response, "streaming", True):
        return response
    content = response.content
    try:
        response.close()
    except Exception:
        # As a server does when close() fails: the answer stands, the fault is logged.
        logger.exception("closing the response failed")
    return [content]


def _served(environ, start_response):
    return _whole(_handler(environ)(environ, start_response))


def _served_and_logged(environ, start_response):
    started = time.perf_counter()
    answer = []

    def start(status, headers, exc_info=None):
        answer[:] = (status, headers)
        return start_response(status, headers, exc_info)

    try:
        body = _served(environ, start)
    except BaseException:
        access_line(environ, "500 Internal Server Error", [], 0,
                    time.perf_counter() - started)
        raise
    if isinstance(body, list):
        sent = 0 if environ.get("REQUEST_METHOD") == "HEAD" else len(body[0])
        access_line(environ, *answer, sent, time.perf_counter() - started)
        return body
    return _LoggedStream(body, environ, answer, started)


class _LoggedStream:
    """A streamed body (a CSV export, a static file) counted as it is sent, its access
    line written when the server closes it."""

    def __init__(self, body, environ, answer, started):
        self.body, self.environ, self.answer, self.started = body, environ, answer, started
        self.size = 0

    def __iter__(self):
        for chunk in self.body:
            self.size += len(chunk)
            yield chunk

    def close(self):
        try:
            if hasattr(self.body, "close"):
                self.body.close()
        finally:
            access_line(self.environ, *self.answer, self.size,
                        time.perf_counter() - self.started)


application = _served_and_logged if settings.ACCESS_LOG else _served
