"""Outgoing mail from the environment: EMAIL_URL, or EMAIL_HOST and its companions;
neither: the console (mail is printed, for local work)."""

from urllib.parse import parse_qs, unquote, urlsplit

from django.core.exceptions import ImproperlyConfigured

SMTP_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
CONSOLE_BACKEND = "django.core.mail.backends.console.EmailBackend"
_TRUE = {"1", "true", "yes", "on"}


def email_settings(environ) -> dict:
    """Django's EMAIL_* settings. EMAIL_URL: `smtp://user:password@host:587?tls=true`,
    `smtp+tls://...` (STARTTLS, port 587 by default) or `smtps://...` (implicit TLS, 465);
    user and password percent-encoded. Otherwise EMAIL_HOST, EMAIL_PORT (25),
    EMAIL_HOST_USER, EMAIL_HOST_PASSWORD, EMAIL_USE_TLS, EMAIL_USE_SSL. EMAIL_BACKEND
    overrides the backend either way; EMAIL_TIMEOUT (seconds, default 10) bounds a slow
    server."""
    timeout = int(environ.get("EMAIL_TIMEOUT") or 10)
    url = environ.get("EMAIL_URL", "").strip()
    if url:
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in {"smtp", "smtp+tls", "smtps", "smtp+ssl"}:
            raise ImproperlyConfigured(f"EMAIL_URL: unknown scheme {parts.scheme!r} "
                                       "(smtp, smtp+tls or smtps)")
        if not parts.hostname:
            raise ImproperlyConfigured("EMAIL_URL has no host")
        query = {k: v[-1].lower() for k, v in parse_qs(parts.query).items()}
        use_ssl = scheme in {"smtps", "smtp+ssl"} or query.get("ssl") in _TRUE
        use_tls = not use_ssl and (scheme == "smtp+tls" or query.get("tls") in _TRUE)
        port = parts.port or (465 if use_ssl else 587 if use_tls else 25)
        config = {"EMAIL_BACKEND": SMTP_BACKEND, "EMAIL_HOST": parts.hostname,
                  "EMAIL_PORT": port, "EMAIL_HOST_USER": unquote(parts.username or ""),
                  "EMAIL_HOST_PASSWORD": unquote(parts.password or ""),
                  "EMAIL_USE_TLS": use_tls, "EMAIL_USE_SSL": use_ssl}
    elif environ.get("EMAIL_HOST"):
        use_ssl = environ.get("EMAIL_USE_SSL", "").strip().lower() in _TRUE
        use_tls = environ.get("EMAIL_USE_TLS", "").strip().lower() in _TRUE
        if use_ssl and use_tls:
            raise ImproperlyConfigured("EMAIL_USE_TLS and EMAIL_USE_SSL exclude each other")
        config = {"EMAIL_BACKEND": SMTP_BACKEND, "EMAIL_HOST": environ["EMAIL_HOST"],
                  "EMAIL_PORT": int(environ.get("EMAIL_PORT") or 25),
                  "EMAIL_HOST_USER": environ.get("EMAIL_HOST_USER", ""),
                  "EMAIL_HOST_PASSWORD": environ.get("EMAIL_HOST_PASSWORD", ""),
                  "EMAIL_USE_TLS": use_tls, "EMAIL_USE_SSL": use_ssl}
    else:
        config = {"EMAIL_BACKEND": CONSOLE_BACKEND}
    if environ.get("EMAIL_BACKEND"):
        config["EMAIL_BACKEND"] = environ["EMAIL_BACKEND"]
    config["EMAIL_TIMEOUT"] = timeout
    return config
