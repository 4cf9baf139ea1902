"""Test session set-up. Tests run against the real PostgreSQL and Redis: a missing
service fails the session instead of being skipped."""

import os
import weakref

import pytest
from django.conf import settings
from django.db import connections
from django.db.backends.signals import connection_created

from metering.selectors import books_discrepancies

INTERNAL_TOKEN = "test-internal-token"

# The reliability and security figures: their marker, fixture and table (make prove).
pytest_plugins = ["tests.prove.plugin"]


def pytest_configure(config):
    problems = []
    if not os.environ.get("DATABASE_URL", "").startswith(("postgres://", "postgresql://")):
        problems.append("DATABASE_URL must point at PostgreSQL")
    if not os.environ.get("REDIS_URL", "").startswith("redis://"):
        problems.append("REDIS_URL must point at Redis")
    if problems:
        raise pytest.UsageError("; ".join(problems) + " (see README.md: `make test`)")


def pytest_sessionstart(session):
    # A failing test's captured log lines are printed: scrubbed like the service's own.
    from tests.ops.pytest_logs import scrub_pytest_log_reports

    scrub_pytest_log_reports(session.config)


@pytest.fixture(scope="session")
def django_db_setup(django_db_setup):
    """The test databases, and, before they are dropped, every database connection this
    process opened closed, whatever thread or context opened it. A connection made in
    another context (Playwright's, a worker thread's) is not among the ones pytest-django
    closes, and an open one keeps the test database from being dropped."""
    opened = weakref.WeakSet()

    def remember(sender, connection, **kwargs):
        opened.add(connection)

    connection_created.connect(remember, dispatch_uid="tests-connections-opened")
    yield
    connection_created.disconnect(dispatch_uid="tests-connections-opened")
    own = {id(connection) for connection in connections.all()}
    for wrapper in list(opened):
        raw = wrapper.connection
        if id(wrapper) not in own and raw is not None and not raw.closed:
            # Its thread or context is gone; Django would refuse to close it from here.
            raw.close()


@pytest.fixture(scope="session", autouse=True)
def _services_reachable(django_db_blocker):
    import redis

    redis.Redis.from_url(settings.REDIS_URL).ping()


@pytest.fixture(autouse=True)
def _internal_token(settings):
    settings.BILLING_INTERNAL_TOKENS = [INTERNAL_TOKEN, "second-token"]


@pytest.fixture(autouse=True)
def _ledger_checked_after_each_test(request):
    """After every scenario that touched the database, the books must agree."""
    # A test that asks for the database by fixture rather than by marker would have it
    # set up after this fixture, and rolled back before the check below: set it up first.
    for name in ("transactional_db", "db"):
        if name in request.fixturenames:
            request.getfixturevalue(name)
            break
    yield
    if request.node.get_closest_marker("ledger_tampered"):
        return
    if not ({"db", "transactional_db", "django_db_setup"} & set(request.fixturenames)
            or request.node.get_closest_marker("django_db")):
        return
    django_db_blocker = request.getfixturevalue("django_db_blocker")
    with django_db_blocker.unblock():
        problems = books_discrepancies()
    assert problems == [], "ledger_check after the test:\n" + "\n".join(problems)


@pytest.fixture
def api():
    """A client for /internal/v1/ carrying a valid service token."""
    from rest_framework.test import APIClient

    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {INTERNAL_TOKEN}")
    return client


@pytest.fixture
def anon_api():
    from rest_framework.test import APIClient

    return APIClient()


@pytest.fixture
def admin_client(client, admin_user):
    """pytest-django's admin client, signed in with the console's second factor too."""
    from console.demo import staff_totp_device_ensure
    from tests.console.support import otp_login

    staff_totp_device_ensure(user=admin_user)
    return otp_login(client, admin_user)
