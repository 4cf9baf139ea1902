"""Production settings: `check --deploy` clean, the headers and cookies a browser gets,
static files from the app servers, and the API docs readable offline."""

import os
import re
import secrets
import subprocess
import sys
from html.parser import HTMLParser

import pytest
import requests
from django.conf import settings as django_settings

from tests.console.support import otp_login, staff_user
from tests.ops.conftest import wait_for

PRODUCTION_ENV = {
    "DJANGO_PRODUCTION": "1",
    "DJANGO_SECRET_KEY": secrets.token_urlsafe(50),
    "DJANGO_ALLOWED_HOSTS": "billing.example.com,127.0.0.1",
}


def _manage(*args: str, env: dict) -> subprocess.CompletedProcess:
    environment = {**os.environ, **env}
    # Not the production environment: the debugging switches of a test process (browser
    # tests allow async-unsafe calls).
    for name in ("DJANGO_DEBUG", "DJANGO_ALLOW_ASYNC_UNSAFE"):
        environment.pop(name, None)
    return subprocess.run([sys.executable, "manage.py", *args], cwd=django_settings.BASE_DIR,
                          env=environment, capture_output=True, text=True, timeout=300)


def test_check_deploy_is_clean_with_the_production_environment():
    result = _manage("check", "--deploy", "--fail-level", "DEBUG", env=PRODUCTION_ENV)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues (0 silenced)." in result.stdout
    # ...and it does flag a development environment (the check is real)
    development = _manage("check", "--deploy", "--fail-level", "WARNING", env={})
    assert development.returncode != 0
    assert "security.W004" in development.stderr + development.stdout


def test_production_refuses_to_start_without_a_secret_key():
    env = {**PRODUCTION_ENV, "DJANGO_SECRET_KEY": ""}
    result = _manage("check", env=env)
    assert result.returncode != 0
    assert "DJANGO_SECRET_KEY must be set in production" in result.stderr


@pytest.fixture(scope="module")
def collected_static(tmp_path_factory):
    root = tmp_path_factory.mktemp("static")
    result = _manage("collectstatic", "--noinput", "-v0",
                     env={**PRODUCTION_ENV, "DJANGO_STATIC_ROOT": str(root)})
    assert result.returncode == 0, result.stderr
    return root


def test_production_headers_cookies_redirects_and_static_files(
        production_server, collected_static, django_db_setup):
    from django.db import connection

    db = connection.settings_dict
    server = production_server(
        **PRODUCTION_ENV, DJANGO_STATIC_ROOT=str(collected_static),
        DATABASE_URL=f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}")
    https = {"X-Forwarded-Proto": "https", "Host": "billing.example.com"}

    # Plain HTTP to a page: sent to HTTPS; probes answer in plain HTTP
    plain = requests.get(f"{server.url}/admin/login/", allow_redirects=False, timeout=10,
                         headers={"Host": "billing.example.com"})
    assert plain.status_code == 301
    assert plain.headers["Location"] == "https://billing.example.com/admin/login/"
    assert requests.get(f"{server.url}/healthz", timeout=10,
                        headers={"Host": "billing.example.com"}).status_code == 200

    # Over HTTPS (at the load balancer): HSTS, CSP, framing, sniffing, secure cookies
    page = requests.get(f"{server.url}/admin/login/", headers=https, timeout=10)
    assert page.status_code == 200
    headers = page.headers
    assert headers["Strict-Transport-Security"] == \
        "max-age=31536000; includeSubDomains; preload"
    csp = headers["Content-Security-Policy"]
    assert "default-src 'self'" in csp and "script-src 'self'" in csp
    assert "frame-ancestors 'none'" in csp
    assert headers["X-Frame-Options"] == "DENY"
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["Referrer-Policy"] == "same-origin"
    cookie = headers["Set-Cookie"]
    assert "csrftoken=" in cookie and "Secure" in cookie and "SameSite=Lax" in cookie

    # Static files: hashed names, served compressed by the app server, cached for ever
    stylesheet = re.search(r'href="(/static/admin/css/base\.[0-9a-f]{12}\.css)"', page.text)
    assert stylesheet, page.text[:2000]
    asset = requests.get(f"{server.url}{stylesheet.group(1)}", timeout=10,
                         headers={**https, "Accept-Encoding": "gzip"})
    assert asset.status_code == 200
    assert asset.headers["Content-Type"].startswith("text/css")
    assert "max-age=315360000" in asset.headers["Cache-Control"]
    assert asset.headers.get("Content-Encoding") == "gzip"

    # The access log: one JSON line per request, with the id each response carried and
    # the size it sent (a file streamed by whitenoise counted as it went out)
    def access_line(path: str, status: int = 200) -> dict:
        found = [line for line in server.log_lines()
                 if line.get("logger") == "billing.access" and line.get("path") == path
                 and line.get("status") == status]
        assert len(found) == 1, (path, found)
        return found[0]

    wait_for(lambda: any(line.get("path") == stylesheet.group(1)
                         for line in server.log_lines()), timeout=10,
             message="the static file's access line")
    page_line = access_line("/admin/login/")
    assert page_line["request_id"] == page.headers["X-Request-Id"]
    assert (page_line["method"], page_line["status"], page_line["bytes"]) == \
        ("GET", 200, len(page.content))
    assert page_line["remote_addr"] == "127.0.0.1"
    assert page_line["user_agent"].startswith("python-requests/")
    assert page_line["duration_ms"] > 0
    asset_line = access_line(stylesheet.group(1))
    assert (asset_line["status"], asset_line["bytes"]) == \
        (200, int(asset.headers["Content-Length"]))
    redirect_line = access_line("/admin/login/", 301)
    assert redirect_line["request_id"] == plain.headers["X-Request-Id"]


class _Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag, attrs):
        for name, value in attrs:
            if name in ("src", "href", "spec-url", "action") and value:
                self.urls.append(value)


def test_the_api_docs_load_nothing_from_another_host(client, db):
    otp_login(client, staff_user("ops-docs@example.com", superuser=True))

    page = client.get("/internal/v1/docs")

    assert page.status_code == 200
    html = page.content.decode()
    links = _Links()
    links.feed(html)
    assert links.urls, html
    assert not [url for url in links.urls if re.match(r"^(https?:)?//", url)], links.urls
    assert not re.search(r"https?://(?!127\.0\.0\.1|testserver)", html)
    # Redoc itself comes from the service, and so does the schema it reads
    script = next(url for url in links.urls if url.endswith(".js"))
    assert script.startswith("/static/drf_spectacular_sidecar/redoc/")
    asset = client.get(script)
    assert asset.status_code == 200
    assert b"Redoc" in b"".join(asset.streaming_content)[:200_000]
    schema_url = next(url for url in links.urls if "schema" in url)
    assert client.get(schema_url).status_code == 200
    # and the page's policy lets only the service's own scripts run
    assert "script-src 'self'" in page["Content-Security-Policy"]
