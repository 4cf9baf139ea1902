"""The operators' endpoints: /readyz and /metrics.

Readiness: may the load balancer send this process traffic? Yes when PostgreSQL and
Redis both answer within a short time; otherwise 503 naming the part that does not.

(/healthz, liveness, stays in config/urls.py: the process answers, nothing else.)

Each check runs on a small thread pool and is waited for at most READYZ_TIMEOUT_SECONDS, so
a database that hangs rather than refuses still gets a prompt 503. The database check uses
the pool thread's own Django connection, opened for the check and closed after it: the
request's connection is not touched."""

from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import suppress

import redis
from django.conf import settings
from django.db import connection
from django.http import HttpResponse, JsonResponse
from prometheus_client import CONTENT_TYPE_LATEST

from config.api import (
    MethodNotAllowedError,
    Unauthorized,
    application_error_response,
    error_body,
    service_token_ensure,
)
from config.metrics import metrics_text

_checks_pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="readyz")
_redis_client = None


def _timeout() -> float:
    return float(getattr(settings, "READYZ_TIMEOUT_SECONDS", 2.0))


def _database_check() -> None:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
    finally:
        # A fresh connection each time: a probe holds no connection between probes, and
        # one broken by a database restart is never reused.
        with suppress(Exception):
            connection.close()


def _redis_check() -> None:
    global _redis_client
    if _redis_client is None:
        seconds = _timeout()
        _redis_client = redis.Redis.from_url(
            settings.REDIS_URL, socket_timeout=seconds, socket_connect_timeout=seconds)
    _redis_client.ping()


def _describe(exc: BaseException) -> str:
    # The exception's class, not its text: a connection error's text names the server.
    return f"unreachable ({type(exc).__name__})"


def readiness() -> dict[str, str]:
    checks = {"database": _checks_pool.submit(_database_check)}
    if settings.REDIS_URL:
        checks["redis"] = _checks_pool.submit(_redis_check)
    results = {}
    for name, future in checks.items():
        try:
            future.result(timeout=_timeout())
            results[name] = "ok"
        except FutureTimeout:
            results[name] = "timeout"
        except Exception as exc:  # any failure means not ready
            results[name] = _describe(exc)
    if not settings.REDIS_URL:
        results["redis"] = "not configured (in-process cache)"
    return results


def readyz(request):
    checks = readiness()
    failing = [name for name, result in checks.items()
               if result != "ok" and not result.startswith("not configured")]
    if not failing:
        return JsonResponse({"ready": True, "checks": checks})
    message = "Not ready: " + ", ".join(f"{name} {checks[name]}" for name in failing) + "."
    response = JsonResponse(
        error_body(503, "service_unavailable", message, ready=False, failing=failing,
                   checks=checks), status=503)
    response["Retry-After"] = "5"
    response["Cache-Control"] = "no-store"
    return response


def metrics_view(request):
    """Prometheus text (config/metrics.py), for a caller with a service token."""
    try:
        if request.method not in ("GET", "HEAD"):
            raise MethodNotAllowedError("Method not allowed: use GET.",
                                        headers={"Allow": "GET, HEAD"})
        service_token_ensure(request)
    except (MethodNotAllowedError, Unauthorized) as exc:
        return application_error_response(exc)
    return HttpResponse(metrics_text(), content_type=CONTENT_TYPE_LATEST)
