"""Customer API keys: a recognisable prefix, the secret shown once and stored only as its
SHA-256, revocation, and last-used times written at most once a minute."""

import hashlib
import re
from datetime import timedelta

import pytest
from django.db import connection
from rest_framework.request import Request
from rest_framework.test import APIRequestFactory

from accounts import services
from accounts.authentication import CustomerKeyAuthentication
from accounts.models import ApiKey
from accounts.services import InvalidApiKey
from config.caching import TtlCache
from tests.factories import AccountFactory, ApiKeyFactory
from tests.support import BASE, T0, assert_error, db_counts

pytestmark = pytest.mark.django_db

KEY_RE = re.compile(r"^(bk_[A-Za-z0-9]{8})_[A-Za-z0-9_-]{43}$")


@pytest.fixture(autouse=True)
def _fresh_last_used_memory(monkeypatch):
    """Each test starts as a freshly started process would."""
    monkeypatch.setattr(services, "_last_used_written", TtlCache(ttl=60))


def authenticate(key: str, scheme: str = "Bearer "):
    request = APIRequestFactory().get("/api/v1/credits", HTTP_AUTHORIZATION=f"{scheme}{key}")
    return CustomerKeyAuthentication().authenticate(Request(request))


def keys_url(account) -> str:
    return f"{BASE}/accounts/{account.id}/api-keys"


def test_a_key_is_created_with_a_recognisable_prefix_and_shown_once(api):
    account = AccountFactory()

    response = api.post(keys_url(account), {"name": "ci"}, format="json")

    assert response.status_code == 201
    body = response.json()
    api_key = ApiKey.objects.get(account=account)
    assert body["id"] == str(api_key.id)
    assert body["name"] == "ci"
    match = KEY_RE.match(body["key"])
    assert match, body["key"]
    assert match.group(1) == body["prefix"] == api_key.prefix
    # Stored only as the SHA-256 of the full key.
    assert api_key.key_hash == hashlib.sha256(body["key"].encode()).hexdigest()
    # The key works for its account.
    user, auth = authenticate(body["key"])
    assert (user, auth) == (account.user, api_key)
    # Reading the account again never shows it.
    assert body["key"] not in api.get(f"{BASE}/accounts/{account.id}").content.decode()


def test_keys_are_distinct(api):
    account = AccountFactory()
    keys = [api.post(keys_url(account), {"name": "k"}, format="json").json() for _ in range(5)]
    assert len({k["key"] for k in keys}) == len({k["prefix"] for k in keys}) == 5


def test_the_secret_is_nowhere_in_the_database(api):
    account = AccountFactory()
    key = api.post(keys_url(account), {"name": "ci"}, format="json").json()["key"]
    secret = key.split("_", 2)[2]
    assert len(secret) == 43

    # Every row of every table, as text, searched for the secret part of the key.
    tables = connection.introspection.table_names()
    found = {}
    with connection.cursor() as cursor:
        for table in tables:
            quoted = connection.ops.quote_name(table)
            cursor.execute(f"SELECT count(*) FROM {quoted} AS t WHERE t::text LIKE %s",
                           [f"%{secret[:20]}%"])
            found[table] = cursor.fetchone()[0]
    assert "accounts_apikey" in found
    assert sum(found.values()) == 0, {t: n for t, n in found.items() if n}
    # And the search does find what is stored: the prefix.
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM accounts_apikey AS t WHERE t::text LIKE %s",
                       [f"%{key.split('_')[1]}%"])
        assert cursor.fetchone()[0] == 1


@pytest.mark.parametrize("scheme", ["Bearer ", "bearer ", ""])
def test_a_key_is_accepted_with_or_without_the_bearer_scheme(scheme):
    api_key = ApiKeyFactory()
    assert authenticate(api_key.secret, scheme)[1] == api_key


@pytest.mark.parametrize("presented", [
    "bk_unknown_0000000000000000000000000000000000000000000",
    "not a key at all",
])
def test_unknown_keys_are_refused(presented):
    ApiKeyFactory()
    with pytest.raises(InvalidApiKey):
        authenticate(presented)


def test_a_revoked_key_fails_from_the_next_call_on(api):
    api_key = ApiKeyFactory()
    assert authenticate(api_key.secret)[1] == api_key
    url = f"{keys_url(api_key.account)}/{api_key.id}"

    response = api.delete(url)

    assert response.status_code == 204
    assert response.content == b""
    api_key.refresh_from_db()
    revoked_at = api_key.revoked_at
    assert revoked_at is not None
    with pytest.raises(InvalidApiKey):
        authenticate(api_key.secret)

    # Revoking again is a no-op: 204, the first revocation time kept.
    before = db_counts()
    assert api.delete(url).status_code == 204
    api_key.refresh_from_db()
    assert api_key.revoked_at == revoked_at
    assert db_counts() == before


def test_revoking_leaves_the_accounts_other_keys_working(api):
    account = AccountFactory()
    kept, revoked = ApiKeyFactory(account=account), ApiKeyFactory(account=account)

    assert api.delete(f"{keys_url(account)}/{revoked.id}").status_code == 204

    assert authenticate(kept.secret)[1] == kept
    with pytest.raises(InvalidApiKey):
        authenticate(revoked.secret)


def test_an_expired_key_is_refused(time_machine):
    time_machine.move_to(T0, tick=False)
    api_key = ApiKeyFactory(expires_at=T0 + timedelta(days=1))
    time_machine.move_to(T0 + timedelta(days=1) - timedelta(microseconds=1), tick=False)
    assert authenticate(api_key.secret)[1] == api_key

    time_machine.move_to(T0 + timedelta(days=1), tick=False)
    with pytest.raises(InvalidApiKey):
        authenticate(api_key.secret)


def test_a_key_can_be_created_with_an_expiry(api, time_machine):
    time_machine.move_to(T0, tick=False)
    account = AccountFactory()
    response = api.post(keys_url(account), {"name": "temp", "expires_at": "2026-03-09T09:00:00Z"},
                        format="json")
    assert response.status_code == 201
    assert response.json()["expires_at"] == "2026-03-09T09:00:00Z"
    assert ApiKey.objects.get(account=account).expires_at.isoformat() == "2026-03-09T09:00:00+00:00"


class TestLastUsed:
    def last_used(self, api_key):
        api_key.refresh_from_db(fields=["last_used_at"])
        return api_key.last_used_at

    def test_written_at_most_once_a_minute(self, time_machine, django_assert_num_queries):
        time_machine.move_to(T0, tick=False)
        api_key = ApiKeyFactory()
        assert self.last_used(api_key) is None

        authenticate(api_key.secret)
        assert self.last_used(api_key) == T0

        # Within the minute: the key is read, and nothing is written.
        time_machine.move_to(T0 + timedelta(seconds=59), tick=False)
        with django_assert_num_queries(1):
            authenticate(api_key.secret)
        assert self.last_used(api_key) == T0

        # A minute on: written again.
        time_machine.move_to(T0 + timedelta(seconds=60), tick=False)
        authenticate(api_key.secret)
        assert self.last_used(api_key) == T0 + timedelta(seconds=60)

    def test_another_process_does_not_write_within_the_minute_either(
            self, time_machine, monkeypatch):
        time_machine.move_to(T0, tick=False)
        api_key = ApiKeyFactory()
        authenticate(api_key.secret)

        # Given a second process (nothing remembered in memory) using the key 30s later.
        monkeypatch.setattr(services, "_last_used_written", TtlCache(ttl=60))
        time_machine.move_to(T0 + timedelta(seconds=30), tick=False)
        authenticate(api_key.secret)

        # Then the stored time is still the first one.
        assert self.last_used(api_key) == T0

    def test_a_refused_key_is_not_touched(self, time_machine):
        time_machine.move_to(T0, tick=False)
        api_key = ApiKeyFactory()
        ApiKey.objects.filter(id=api_key.id).update(revoked_at=T0)
        with pytest.raises(InvalidApiKey):
            authenticate(api_key.secret)
        assert self.last_used(api_key) is None


def test_deleting_another_accounts_key_is_not_found_and_revokes_nothing(api):
    api_key = ApiKeyFactory()
    stranger = AccountFactory()
    before = db_counts()

    response = api.delete(f"{keys_url(stranger)}/{api_key.id}")

    assert_error(response, 404, "api_key_not_found")
    api_key.refresh_from_db()
    assert api_key.revoked_at is None
    assert db_counts() == before
