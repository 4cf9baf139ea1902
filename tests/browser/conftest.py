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


@pytest.fixture(autouse=True)
def _reference_data(transactional_db):
    """The seeded tables (plans, size classes, tiers) as the migrations leave them: a live
    server test empties the database when it ends, and the restore of the seeded rows
    is not always run before the next one's fixtures."""
    from importlib import import_module

    from django.apps import apps

    for module in ("billing.migrations.0002_seed_plans",
                   "metering.migrations.0002_seed_catalog",
                   "ratelimits.migrations.0002_seed_tiers"):
        import_module(module).seed(apps, None)


@pytest.fixture
def catalog(_reference_data):
    models_ensure()
