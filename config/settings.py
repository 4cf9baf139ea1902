"""Settings, 12-factor: everything that differs between deployments comes from the
environment. Without DATABASE_URL / REDIS_URL the service runs on an embedded SQLite
file, an in-process cache and eager tasks, for a first look."""

import os
from datetime import timedelta
from pathlib import Path

import dj_database_url
from csp.constants import NONCE as CSP_NONCE
from django.core.exceptions import ImproperlyConfigured

from config.email_settings import email_settings
from config.logs import logging_config

BASE_DIR = Path(__file__).resolve().parent.parent


def env_bool(name: str, default: bool = False) -> bool:
    value = os.environ.get(name)
    if value is None:
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return default if value in (None, "") else int(value)


def env_float(name: str, default: float) -> float:
    value = os.environ.get(name)
    return default if value in (None, "") else float(value)


DEBUG = env_bool("DJANGO_DEBUG", False)
SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "")
if not SECRET_KEY:
    if not DEBUG and env_bool("DJANGO_REQUIRE_SECRET_KEY", False):
        raise ImproperlyConfigured("DJANGO_SECRET_KEY must be set in production")
    # Development only; `manage.py check --deploy` flags it.
    SECRET_KEY = "django-insecure-development-key-change-me-in-production-0123456789"

ALLOWED_HOSTS = [h for h in os.environ.get("DJANGO_ALLOWED_HOSTS", "*").split(",") if h]
CSRF_TRUSTED_ORIGINS = [
    o for o in os.environ.get("DJANGO_CSRF_TRUSTED_ORIGINS", "").split(",") if o
]

INSTALLED_APPS = [
    "console.apps.ConsoleAdminConfig",  # the Django admin, on the console's site
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",  # the API docs' assets, served from here
    "csp",
    "accounts",
    "billing",
    "metering",
    "ratelimits",
    "notifications",
    "allauth",
    "allauth.account",
    "allauth.mfa",
    "dashboard",
    "django_otp",
    "django_otp.plugins.otp_totp",
    "console.apps.ConsoleConfig",
]

MIDDLEWARE = [
    "config.logs.RequestIdMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "config.static.StaticFilesMiddleware",  # whitenoise
    "config.csp.ContentSecurityPolicyMiddleware",  # django-csp, plus Stripe.js
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django_otp.middleware.OTPMiddleware",  # the console's second factor
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "allauth.account.middleware.AccountMiddleware",
]
# Served by config.wsgi's machine handler: the internal API and the health check.
MACHINE_PATH_PREFIXES = ("/internal/", "/healthz", "/readyz", "/metrics")
# Callers that read JSON, never an HTML error page (config/api.py handler400/500).
MACHINE_ERROR_PATH_PREFIXES = ("/internal/", "/api/", "/stripe/", "/healthz", "/readyz",
                               "/metrics")
# ...except the API's description, which staff signed in to the console read in a browser.
BROWSER_PATH_PREFIXES = ("/internal/v1/schema", "/internal/v1/docs")
MACHINE_MIDDLEWARE = [
    "config.logs.RequestIdMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "django.middleware.common.CommonMiddleware",  # sets Content-Length: keep-alive clients
]

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# --- Database -------------------------------------------------------------------------
DATABASE_URL = os.environ.get("DATABASE_URL", "")
if DATABASE_URL:
    DATABASES = {
        "default": dj_database_url.parse(
            DATABASE_URL, conn_max_age=env_int("DATABASE_CONN_MAX_AGE", 600),
        )
    }
    # psycopg prepares a server-side-bound statement after this many executions on a
    # connection: the run path's statements are then planned once, not on every call.
    # 0 disables it (e.g. behind a transaction-pooling proxy without prepared statements).
    _prepare_threshold = env_int("DATABASE_PREPARE_THRESHOLD", 5)
    DATABASES["default"].setdefault("OPTIONS", {})["prepare_threshold"] = (
        _prepare_threshold or None)
    # Every wait on PostgreSQL is bounded, well under the gateway's patience: a call that
    # cannot connect, waits on a row lock held elsewhere, or runs away is refused (the
    # contract's 503, safe to retry) instead of holding a server thread that every other
    # account's calls queue behind. Long maintenance commands lift the statement limit.
    DATABASES["default"]["OPTIONS"].update({
        "connect_timeout": env_int("DATABASE_CONNECT_TIMEOUT_SECONDS", 3),
        "options": (f"-c lock_timeout={env_int('DATABASE_LOCK_TIMEOUT_MS', 5_000)} "
                    f"-c statement_timeout={env_int('DATABASE_STATEMENT_TIMEOUT_MS', 15_000)}"),
    })
else:
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": os.environ.get("SQLITE_PATH", str(BASE_DIR / "var" / "db.sqlite3")),
            "OPTIONS": {"timeout": 20, "transaction_mode": "IMMEDIATE"},
        }
    }
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Cache, rate limits, Celery ---------------------------------------------------------
REDIS_URL = os.environ.get("REDIS_URL", "")
if REDIS_URL:
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": os.environ.get("CACHE_KEY_PREFIX", "billing"),
            # Redis answers in well under a millisecond; one that does not answer in this
            # long is down or frozen, and the call that needs it answers 503 at once.
            "OPTIONS": {
                "socket_connect_timeout": env_float("REDIS_CONNECT_TIMEOUT_SECONDS", 0.5),
                "socket_timeout": env_float("REDIS_TIMEOUT_SECONDS", 0.5),
            },
        }
    }
    CELERY_BROKER_URL = os.environ.get("CELERY_BROKER_URL", REDIS_URL)
    CELERY_TASK_ALWAYS_EAGER = env_bool("CELERY_TASK_ALWAYS_EAGER", False)
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
    CELERY_BROKER_URL = "memory://"
    CELERY_TASK_ALWAYS_EAGER = True
CELERY_TASK_EAGER_PROPAGATES = True
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TIMEZONE = "UTC"
CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": 3600,
                                   "socket_connect_timeout": 1, "socket_timeout": 2}
# A task enqueued after a commit (auto-reload for a crossing) must not hold the caller when
# the broker is down: one quick try; the periodic sweeps pick up what was not enqueued.
CELERY_TASK_PUBLISH_RETRY_POLICY = {"max_retries": 1, "interval_start": 0,
                                    "interval_step": 0.2, "interval_max": 0.2}
CELERY_BEAT_SCHEDULE = {
    "expire-due-credit-lots": {
        "task": "billing.tasks.credit_lots_expire_due",
        "schedule": timedelta(minutes=1),
    },
    # Each minute: a free account whose grant just lapsed waits at most that for the next.
    "refresh-free-grants": {
        "task": "billing.tasks.free_grants_refresh_due",
        "schedule": timedelta(minutes=1),
    },
}
# Apps add their own periodic work to CELERY_BEAT_SCHEDULE below this line.
CELERY_BEAT_SCHEDULE["resume-stalled-payments"] = {
    "task": "billing.tasks.payments_resume_stalled",
    "schedule": timedelta(minutes=1),
}

RATELIMIT_USE_CACHE = "default"
# Invalid customer API keys one client address may present to /api/v1/ per minute before
# every key it presents is refused with 429 for the rest of the minute (key guessing).
CUSTOMER_KEY_GUESSES_PER_MINUTE = env_int("CUSTOMER_KEY_GUESSES_PER_MINUTE", 20)
# Failed staff console sign-ins one address may make per minute (password or code wrong).
STAFF_LOGIN_FAILURES_PER_MINUTE = env_int("STAFF_LOGIN_FAILURES_PER_MINUTE", 10)

# --- Auth -------------------------------------------------------------------------------
AUTH_USER_MODEL = "accounts.User"
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
# The customer dashboard's front door (staff keep /admin/login/).
LOGIN_URL = "account_login"
LOGIN_REDIRECT_URL = "dashboard:overview"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = Path(os.environ.get("DJANGO_STATIC_ROOT", BASE_DIR / "staticfiles"))

# Mail: SMTP from EMAIL_URL or EMAIL_HOST..., else the console (config/email_settings.py).
_email = email_settings(os.environ)
EMAIL_BACKEND = _email["EMAIL_BACKEND"]
EMAIL_TIMEOUT = _email["EMAIL_TIMEOUT"]
EMAIL_HOST = _email.get("EMAIL_HOST", "localhost")
EMAIL_PORT = _email.get("EMAIL_PORT", 25)
EMAIL_HOST_USER = _email.get("EMAIL_HOST_USER", "")
EMAIL_HOST_PASSWORD = _email.get("EMAIL_HOST_PASSWORD", "")
EMAIL_USE_TLS = _email.get("EMAIL_USE_TLS", False)
EMAIL_USE_SSL = _email.get("EMAIL_USE_SSL", False)
DEFAULT_FROM_EMAIL = os.environ.get("DEFAULT_FROM_EMAIL", "billing@example.com")
SERVER_EMAIL = DEFAULT_FROM_EMAIL
# Where customers reach the dashboard: emails link to its pages from here.
SITE_URL = os.environ.get("SITE_URL", "http://127.0.0.1:8000")
# Receipts and low-balance emails whose task was never enqueued (the broker was down).
CELERY_BEAT_SCHEDULE["email-money-unsent"] = {
    "task": "billing.tasks.money_emails_unsent_send",
    "schedule": timedelta(minutes=5),
}
CELERY_BEAT_SCHEDULE["email-credit-expiring-soon"] = {
    "task": "billing.tasks.credit_expiring_emails_due",
    "schedule": timedelta(minutes=15),
}

# --- API --------------------------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [],
    "DEFAULT_PERMISSION_CLASSES": [],
    "DEFAULT_PARSER_CLASSES": ["rest_framework.parsers.JSONParser",
                               "config.parsers.JsonBodyParser"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "EXCEPTION_HANDLER": "config.api.exception_handler",
    "UNAUTHENTICATED_USER": None,
    "DEFAULT_SCHEMA_CLASS": "config.api.InternalAutoSchema",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Billing service internal API",
    "DESCRIPTION": "The contract between the billing service, the inference gateway "
    "and the platform's services.",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    "SCHEMA_PATH_PREFIX": r"/(internal|api)/v1",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
    # Bodies are documented as what they are, JSON (config.parsers.JsonBodyParser reads any).
    "PARSER_WHITELIST": ["rest_framework.parsers.JSONParser"],
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "config.schema.error_responses_hook",
        "config.schema.links_hook",
    ],
}

# Service tokens for /internal/v1/ (comma-separated).
BILLING_INTERNAL_TOKENS = [
    t.strip() for t in os.environ.get("BILLING_INTERNAL_TOKENS", "").split(",") if t.strip()
]

# --- Billing knobs (operational; prices, tiers and plans are database tables) ------------
CREDIT_LOT_LIFETIME = timedelta(days=env_int("CREDIT_LOT_LIFETIME_DAYS", 28))
TIER_WINDOW = timedelta(days=env_int("TIER_WINDOW_DAYS", 28))

STRIPE_SECRET_KEY = os.environ.get("STRIPE_SECRET_KEY", "")
STRIPE_PUBLISHABLE_KEY = os.environ.get("STRIPE_PUBLISHABLE_KEY", "")
STRIPE_WEBHOOK_SECRET = os.environ.get("STRIPE_WEBHOOK_SECRET", "")
STRIPE_API_BASE = os.environ.get("STRIPE_API_BASE", "")
# Webhooks older than this (by their signed timestamp) are refused as replays.
STRIPE_WEBHOOK_TOLERANCE_SECONDS = env_int("STRIPE_WEBHOOK_TOLERANCE_SECONDS", 300)
# How long a refund or dispute of one of our customers waits (answered 500, so Stripe
# delivers it again) for the purchase it reverses before it is acknowledged as not ours.
STRIPE_EVENT_PURCHASE_WAIT = timedelta(
    hours=env_int("STRIPE_EVENT_PURCHASE_WAIT_HOURS", 24))
# The one class that talks to Stripe (billing/stripe_gateway.py).
BILLING_STRIPE_GATEWAY = os.environ.get("BILLING_STRIPE_GATEWAY",
                                        "billing.stripe_gateway.StripeGateway")
# A credit purchase: whole cents between these.
PURCHASE_MIN_CENTS = env_int("PURCHASE_MIN_CENTS", 500)
PURCHASE_MAX_CENTS = env_int("PURCHASE_MAX_CENTS", 1_000_000)
# A worker charging a card holds the payment this long; after that, another may resume
# the charge (with the same idempotency key).
PAYMENT_CLAIM_SECONDS = env_int("PAYMENT_CLAIM_SECONDS", 120)
# Auto-scale: callers within this long of a successful auto-scale purchase are taken to
# belong to the same burst and do not buy again; a caller waits at most this long for a
# purchase in flight.
AUTO_SCALE_BURST_SECONDS = env_int("AUTO_SCALE_BURST_SECONDS", 60)
AUTO_SCALE_WAIT_SECONDS = env_int("AUTO_SCALE_WAIT_SECONDS", 30)

# JSON lines with the request id, secrets scrubbed (config/logs.py). LOG_FORMAT=text for
# a person at a terminal; LOG_FILE also appends every line to that file.
LOGGING = logging_config(level=os.environ.get("LOG_LEVEL", "INFO"),
                         fmt=os.environ.get("LOG_FORMAT", "json"),
                         file=os.environ.get("LOG_FILE", ""))
# One JSON line per request (the server's access log, written by the service so that it
# carries the request id): on under deploy/serve.py, off elsewhere (runserver has its own).
ACCESS_LOG = env_bool("ACCESS_LOG")

# --- Staff console ------------------------------------------------------------------------
# The most a member of the Support group may grant in one action (Finance: no limit).
STAFF_SUPPORT_GRANT_LIMIT_USD = env_int("STAFF_SUPPORT_GRANT_LIMIT_USD", 50)
# The issuer shown in staff members' authenticator apps.
OTP_TOTP_ISSUER = os.environ.get("OTP_TOTP_ISSUER", "Billing console")

# --- Run path -----------------------------------------------------------------------------
HOLD_LEASE = timedelta(seconds=env_int("HOLD_LEASE_SECONDS", 120))
LATE_SETTLE_WINDOW = timedelta(seconds=env_int("LATE_SETTLE_WINDOW_SECONDS", 24 * 3600))
# Group commit (metering/group_commit.py): authorizes, and settles, that arrive while one is
# in flight share the next statement and its commit. PostgreSQL only.
RUN_PATH_GROUP_COMMIT = env_bool("RUN_PATH_GROUP_COMMIT", True)
CELERY_BEAT_SCHEDULE["expire-lapsed-holds"] = {
    "task": "metering.tasks.holds_expire_due",
    "schedule": timedelta(seconds=30),
}
# Key spend notices whose email no worker sent (a broker that was down at commit).
CELERY_BEAT_SCHEDULE["send-unsent-key-spend-notices"] = {
    "task": "ratelimits.tasks.key_spend_notices_unsent_send",
    "schedule": timedelta(minutes=5),
}

# --- Customer dashboard: sign-up, log-in, email verification, password reset (allauth) ---
AUTHENTICATION_BACKENDS = [
    "django.contrib.auth.backends.ModelBackend",
    "allauth.account.auth_backends.AuthenticationBackend",
]
ACCOUNT_ADAPTER = "dashboard.adapters.CustomerAccountAdapter"
ACCOUNT_USER_MODEL_USERNAME_FIELD = None
ACCOUNT_LOGIN_METHODS = {"email"}
ACCOUNT_SIGNUP_FIELDS = ["email*", "password1*", "password2*"]
ACCOUNT_EMAIL_VERIFICATION = "mandatory"
ACCOUNT_UNIQUE_EMAIL = True
ACCOUNT_LOGIN_ON_EMAIL_CONFIRMATION = True
ACCOUNT_LOGOUT_REDIRECT_URL = "account_login"
ACCOUNT_EMAIL_SUBJECT_PREFIX = ""
ACCOUNT_SESSION_REMEMBER = None
# allauth's own limits (failed logins per address and per IP, sign-ups, resets) live in
# the cache; its defaults are kept.
MFA_SUPPORTED_TYPES = ["totp", "recovery_codes"]
MFA_TOTP_ISSUER = os.environ.get("MFA_TOTP_ISSUER", "Inference platform")

# --- Production: HTTPS, cookies, headers, static files (README: "Running in production") ---
# DJANGO_PRODUCTION=1 turns these on; `manage.py check --deploy` is clean with it (and a
# real DJANGO_SECRET_KEY and DJANGO_ALLOWED_HOSTS). TLS ends at the load balancer, which
# says so in X-Forwarded-Proto.
PRODUCTION = env_bool("DJANGO_PRODUCTION", False)
if PRODUCTION and not os.environ.get("DJANGO_SECRET_KEY"):
    raise ImproperlyConfigured("DJANGO_SECRET_KEY must be set in production")
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https") if PRODUCTION else None
SECURE_SSL_REDIRECT = env_bool("DJANGO_SECURE_SSL_REDIRECT", PRODUCTION)
# Probes from the load balancer and the metrics scraper may come in plain HTTP.
SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$", r"^metrics$"]
SECURE_HSTS_SECONDS = env_int("DJANGO_HSTS_SECONDS", 31_536_000 if PRODUCTION else 0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = PRODUCTION
SECURE_HSTS_PRELOAD = PRODUCTION
SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = PRODUCTION
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = CSRF_COOKIE_SAMESITE = "Lax"
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
SECURE_CROSS_ORIGIN_OPENER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
# Content-Security-Policy (django-csp) on every page: the service's own scripts and
# Stripe.js (config/csp.py adds Stripe's origins). Inline styles are allowed for the
# admin's and Redoc's; Redoc's search runs in a blob worker. CSP_EXTRA_SCRIPT_SRC adds
# script hosts.
_csp_extra_script = [s for s in os.environ.get("CSP_EXTRA_SCRIPT_SRC", "").split(",") if s]
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": ["'self'"],
        # A page's own inline script runs with the request's nonce:
        # <script nonce="{{ request.csp_nonce }}">.
        "script-src": ["'self'", CSP_NONCE, *_csp_extra_script],
        "style-src": ["'self'", "'unsafe-inline'"],
        "img-src": ["'self'", "data:"],
        "font-src": ["'self'", "data:"],
        "connect-src": ["'self'"],
        "worker-src": ["'self'", "blob:"],
        "frame-src": ["'self'", *_csp_extra_script],
        "frame-ancestors": ["'none'"],
        "form-action": ["'self'"],
        "base-uri": ["'self'"],
        "object-src": ["'none'"],
    },
}
# Static files from the app servers themselves (whitenoise): compressed, with hashed names
# and far-future caching in production (run `manage.py collectstatic` at build time).
# Elsewhere they are found where they lie, without a collectstatic step (after a
# collectstatic, WHITENOISE_USE_FINDERS=0 serves the compressed, long-cached copies).
WHITENOISE_USE_FINDERS = env_bool("WHITENOISE_USE_FINDERS", not PRODUCTION)
if PRODUCTION:
    STORAGES = {
        "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
        "staticfiles": {
            "BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"},
    }
# /readyz waits at most this long for PostgreSQL and for Redis (config/health.py).
READYZ_TIMEOUT_SECONDS = float(os.environ.get("READYZ_TIMEOUT_SECONDS", "2"))
