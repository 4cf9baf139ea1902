"""Structured logs: one JSON object a line, every line of a request (and of the Celery
tasks it enqueues) carrying that request's id, and no secret in any line.

- RequestIdMiddleware takes the caller's `X-Request-Id` (the gateway may pass its own) or
  makes one, keeps it in a context variable for the request and echoes it in the response.
- Celery: the id rides along in a task header and is set again while the task runs
  (config/celery.py connects the signals below).
- JsonFormatter writes the line and then scrubs it: known secrets (service tokens, the
  Stripe keys, Django's secret key) and anything shaped like a customer API key, a Stripe
  secret, a bearer token or a card number are replaced before the line leaves the process.
"""

import json
import logging
import logging.config
import re
import secrets
import traceback
import uuid
from contextlib import suppress
from contextvars import ContextVar
from datetime import UTC, datetime

from celery import current_task, signals
from django.conf import settings
from django.core.signals import request_finished

request_id_var: ContextVar[str | None] = ContextVar("request_id", default=None)

# What a caller may send as its request id; anything else is replaced by our own.
_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._:@/+=-]{1,128}$")
REQUEST_ID_HEADER = "billing_request_id"  # the Celery message header that carries it


def request_id_from(value: str | None) -> str:
    if value and _REQUEST_ID_RE.match(value):
        return value
    # 32 random hex digits, as uuid4().hex was, without building a UUID on every call.
    return secrets.token_hex(16)


def request_id_begin(request) -> str:
    """The request's id (the caller's X-Request-ID if usable, else a new one), set for
    every log line until the response is closed (request_finished, below): Django logs a
    4xx answer after the middleware chain has returned."""
    request_id = request_id_from(request.META.get("HTTP_X_REQUEST_ID"))
    request_id_var.set(request_id)
    return request_id


class RequestIdMiddleware:
    """First in both middleware chains (config/wsgi.py), so Django's own lines for the
    request carry the id too."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        if request.path_info == "/healthz":
            # The liveness probe (and the benchmark's empty view) logs nothing: no id.
            return self.get_response(request)
        request_id = request_id_begin(request)
        response = self.get_response(request)
        response["X-Request-Id"] = request_id
        return response


def _request_id_clear(**kwargs) -> None:
    request_id_var.set(None)


request_finished.connect(_request_id_clear, dispatch_uid="config.logs.request_id_clear")


# --- Redaction ------------------------------------------------------------------------------

REDACTED = "[redacted]"

_PATTERNS = [
    # Customer API keys: the public prefix stays (it names the key), the secret goes.
    (re.compile(r"\b(bk_[A-Za-z0-9]{8})_[A-Za-z0-9_-]{8,}"), r"\1_" + REDACTED),
    # Stripe secret and restricted keys, webhook signing secrets, client secrets.
    (re.compile(r"\b((?:sk|rk)_(?:test|live)_)[A-Za-z0-9]+"), r"\1" + REDACTED),
    (re.compile(r"\bwhsec_[A-Za-z0-9+/=]+"), "whsec_" + REDACTED),
    (re.compile(r"(_secret_)[A-Za-z0-9]+"), r"\1" + REDACTED),
    # Credentials in headers and in key=value or "key": "value" text.
    (re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]{6,}"), r"\1 " + REDACTED),
    (re.compile(r"(?i)((?:api_?key|password|passwd|secret|token|authorization|card_?number)"
                r"[\"']?\s*[:=]\s*[\"']?)(?!(?i:bearer|basic)\s)[^\"'\s,;&}]{4,}"),
     r"\1" + REDACTED),
]
# 13 to 19 digits, optionally grouped by spaces or dashes: a card number if Luhn says so.
_CARD_RE = re.compile(r"(?<![\d.])(?:\d[ -]?){12,18}\d(?![\d.])")


def _luhn_valid(digits: str) -> bool:
    total = 0
    for index, char in enumerate(reversed(digits)):
        value = int(char)
        if index % 2:
            value = value * 2 - 9 if value > 4 else value * 2
        total += value
    return total % 10 == 0


def _card_redact(match: re.Match) -> str:
    digits = re.sub(r"[ -]", "", match.group(0))
    return "[card number]" if digits[0] in "23456" and _luhn_valid(digits) else match.group(0)


def _configured_secrets() -> list[str]:
    """The secrets this process was given; read each time (tests change them)."""
    try:
        if not settings.configured:
            return []
        values = [*settings.BILLING_INTERNAL_TOKENS, settings.SECRET_KEY,
                  settings.STRIPE_SECRET_KEY, settings.STRIPE_WEBHOOK_SECRET]
    except Exception:  # logging must never fail on a settings problem
        return []
    # Short values would blank out ordinary words; the patterns above catch shapes.
    return sorted({v for v in values if isinstance(v, str) and len(v) >= 8},
                  key=len, reverse=True)


def redact(text: str) -> str:
    for secret in _configured_secrets():
        if secret in text:
            text = text.replace(secret, REDACTED)
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return _CARD_RE.sub(_card_redact, text)


# --- Formatting -------------------------------------------------------------------------------

# Attributes every LogRecord has; anything else on a record came from `extra=`.
_RECORD_ATTRS = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}

def _task_context() -> dict:
    task = current_task
    if task is None or not getattr(task, "request", None) or task.request.id is None:
        return {}
    return {"task_id": task.request.id, "task": task.name}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(
                timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
        }
        line["message"] = record.getMessage()
        request_id = request_id_var.get()
        if request_id and "request_id" not in line:
            line["request_id"] = request_id
        line.update(_task_context())
        for key, value in vars(record).items():
            if key not in _RECORD_ATTRS and key not in line and not key.startswith("_"):
                line[key] = value
        if record.exc_info:
            line["exception"] = "".join(traceback.format_exception(*record.exc_info))
        elif record.exc_text:
            line["exception"] = record.exc_text
        if record.stack_info:
            line["stack"] = record.stack_info
        return redact(json.dumps(line, default=str, ensure_ascii=False))


class TextFormatter(logging.Formatter):
    """For a person at a terminal (LOG_FORMAT=text); scrubbed like the JSON lines."""

    def __init__(self):
        super().__init__("%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        record.request_id = request_id_var.get() or "-"
        return redact(super().format(record))


def logging_config(*, level: str = "INFO", fmt: str = "json", file: str = "") -> dict:
    """Django's LOGGING: every line through one handler (one formatter, one scrub),
    Django's own loggers included. Django's default config gives the `django` logger a
    console handler of its own and lets it propagate to the root as well, which printed
    every error line twice: here `django` has no handler and only propagates."""
    formatter = "json" if fmt == "json" else "text"
    handlers = {"console": {"class": "logging.StreamHandler", "formatter": formatter}}
    if file:
        # e.g. the test run's log, read afterwards for leaked secrets (tests/ops/).
        handlers["file"] = {"class": "logging.FileHandler", "filename": file,
                            "formatter": "json", "delay": True}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": "config.logs.JsonFormatter"},
                       "text": {"()": "config.logs.TextFormatter"}},
        "handlers": handlers,
        "root": {"handlers": list(handlers), "level": level},
        "loggers": {
            "django": {"handlers": [], "level": level, "propagate": True},
            "django.server": {"handlers": [], "level": level, "propagate": True},
            "django.db.backends": {"level": "WARNING"},
            # granian's own lines, when it runs the service (deploy/serve.py).
            "_granian": {"handlers": [], "level": level, "propagate": True},
            "granian.access": {"handlers": [], "level": "INFO", "propagate": True},
            ACCESS_LOGGER.name: {"handlers": [], "level": "INFO", "propagate": True},
        },
    }


# --- The access log ---------------------------------------------------------------------------

ACCESS_LOGGER = logging.getLogger("billing.access")


def access_line(environ: dict, status: str, headers: list, size: int,
                seconds: float) -> None:
    """One line per request, as a server's access log has it, with the request id the
    response carries (the request's own id is cleared once the response is closed)."""
    fields = {"remote_addr": environ.get("REMOTE_ADDR"),
              "method": environ.get("REQUEST_METHOD"), "path": environ.get("PATH_INFO"),
              "query": environ.get("QUERY_STRING"), "status": int(status[:3]),
              "bytes": size, "duration_ms": round(seconds * 1000, 3),
              "user_agent": environ.get("HTTP_USER_AGENT")}
    for name, value in headers:
        if name.lower() == "x-request-id":
            fields["request_id"] = value
    ACCESS_LOGGER.info("request", extra={k: v for k, v in fields.items() if v not in (None, "")})


# --- Celery: the request id travels with the tasks a request enqueues -------------------------


def task_publish_add_request_id(headers=None, **kwargs) -> None:
    request_id = request_id_var.get()
    if request_id and headers is not None:
        headers.setdefault(REQUEST_ID_HEADER, request_id)


_task_tokens: dict[str, object] = {}


def task_prerun_set_request_id(task_id=None, task=None, **kwargs) -> None:
    request_id = getattr(task.request, REQUEST_ID_HEADER, None) if task else None
    if request_id is None:
        # A task run in-process (eager) keeps its caller's id; a periodic one gets its own.
        request_id = request_id_var.get() or uuid.uuid4().hex
    _task_tokens[task_id] = request_id_var.set(request_id)


def task_postrun_reset_request_id(task_id=None, **kwargs) -> None:
    token = _task_tokens.pop(task_id, None)
    if token is not None:
        with suppress(ValueError):  # set in another context: leave it
            request_id_var.reset(token)


def celery_setup_logging(**kwargs) -> None:
    """The worker logs through Django's LOGGING (the same JSON lines), not Celery's own
    formatting (connecting this signal tells Celery not to configure logging)."""
    logging.config.dictConfig(settings.LOGGING)


def connect_celery_signals() -> None:
    signals.before_task_publish.connect(task_publish_add_request_id, weak=False)
    signals.task_prerun.connect(task_prerun_set_request_id, weak=False)
    signals.task_postrun.connect(task_postrun_reset_request_id, weak=False)
    signals.setup_logging.connect(celery_setup_logging, weak=False)
