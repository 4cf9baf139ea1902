"""Browser tests: pytest-playwright driving Debian's Chromium against the live server on
PostgreSQL. A missing Chromium fails these tests; it never skips them."""

import os
import shutil
from pathlib import Path

import pytest

from tests.runpath import fresh_caches, models_ensure

__all__ = ["fresh_caches"]

# Playwright's sync API runs an event loop in the test's thread; the test's own database
# work (set-up, checks) is ordinary synchronous code all the same.
os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")

CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-sync"]
SCREENSHOTS = Path(__file__).resolve().parents[2] / "var" / "screenshots"
WIDTHS = (375, 1280)


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args):
    if not (Path(CHROMIUM).is_file() and os.access(CHROMIUM, os.X_OK)):
        pytest.fail(f"Chromium is missing at {CHROMIUM}: `apt-get install -y chromium` "
                    "(.ci/run does it); the browser tests need it.", pytrace=False)
    return {**browser_type_launch_args, "executable_path": CHROMIUM, "args": CHROMIUM_ARGS}


@pytest.fixture(scope="session")
def browser_context_args(browser_context_args):
    return {**browser_context_args, "viewport": {"width": 1280, "height": 900}}


class Screenshots:
    """Writes full-page screenshots to var/screenshots/ (emptied at the start of each
    session, so the folder always shows the current pages)."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.taken: list[Path] = []

    def take(self, page, name: str) -> Path:
        width = page.viewport_size["width"]
        path = self.folder / f"{name}-{width}.png"
        page.screenshot(path=str(path), full_page=True)
        self.taken.append(path)
        return path


@pytest.fixture(scope="session")
def screenshots():
    shutil.rmtree(SCREENSHOTS, ignore_errors=True)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    return Screenshots(SCREENSHOTS)


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def catalog(transactional_db):
    models_ensure()


@pytest.fixture(scope="session", autouse=True)
def _serialized_rollback_across_contexts(django_db_setup, django_db_blocker):
    """Playwright's sync API runs the test in another context, where Django hands out new
    connection objects that lack the test database's serialized contents; a test with
    `serialized_rollback` would then not get the seeded rows back, in this package and in
    every transactional test after it. The contents are made visible to every connection
    object of the same backend."""
    from django.db import connections

    for alias in connections:
        connection = connections[alias]
        contents = getattr(connection, "_test_serialized_contents", None)
        if contents is not None:
            type(connection)._test_serialized_contents = contents
