"""Figure 12: security. Keys stored only as hashes, the service token compared in
constant time, no object of one account reachable with another's ids, an inference key
refused on money calls (tests/billing/test_key_scopes.py), unsigned webhooks refused
(tests/billing/test_webhooks.py), guessing rate limited, no secret in the logs."""

import glob
import inspect
import subprocess
import uuid

import pytest
from django.db import connection
from rest_framework.test import APIClient

from accounts.models import ApiKey
from accounts.services import api_key_hash
from billing.models import Card, Payment, Purchase, StripeEvent
from config import api as config_api
from tests.conftest import INTERNAL_TOKEN
from tests.support import ERROR_KEYS

BASE = "/internal/v1"


def pg_dump_data() -> str:
    """Everything the database holds, as text, the way a stolen backup would read."""
    settings_dict = connection.settings_dict
    binaries = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_dump"),
                      key=lambda path: int(path.split("/")[4]))
    assert binaries, "pg_dump not found under /usr/lib/postgresql/*/bin"
    return subprocess.run(
        [binaries[-1], "--data-only", "-h", settings_dict["HOST"] or "127.0.0.1",
         "-p", str(settings_dict["PORT"] or 5432), "-U", settings_dict["USER"] or "postgres",
         settings_dict["NAME"]], check=True, capture_output=True, text=True, timeout=120,
    ).stdout


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
@pytest.mark.figure(12, tried="keys created through the internal API; the whole database "
                    "dumped (pg_dump --data-only) and searched for every secret")
def test_keys_are_stored_only_as_hashes(api, figure):
    keys = []
    for n in range(3):
        account = api.post(f"{BASE}/accounts", {"email": f"sec-{n}@example.com"},
                           format="json").json()
        created = api.post(f"{BASE}/accounts/{account['account_id']}/api-keys",
                           {"name": "gateway"}, format="json")
        assert created.status_code == 201
        keys.append(created.json()["key"])
    dump = pg_dump_data()
    secrets = [*keys, *(key.split("_", 2)[-1] for key in keys), INTERNAL_TOKEN]
    found = [secret for secret in secrets if secret in dump]
    figure.add(counts=f"{len(keys)} keys, {len(dump):,} bytes of dump: {len(found)} secrets "
                      "found; each key's row holds its SHA-256 and public prefix only")
    assert found == []
    for key in keys:
        assert ApiKey.objects.filter(key_hash=api_key_hash(key)).count() == 1


@pytest.mark.django_db
@pytest.mark.figure(12, tried="service token: the right one, wrong tokens of the same "
                    "length, shorter, longer, empty, another scheme; the comparison's code")
def test_the_service_token_is_compared_in_constant_time(anon_api, figure):
    right = INTERNAL_TOKEN
    same_length = right[:-1] + ("x" if right[-1] != "x" else "y")
    wrong = {"same length": same_length, "prefix": right[:-1], "longer": right + "x",
             "empty": "", "one byte": "t"}
    answers = {}
    for name, token in wrong.items():
        response = anon_api.get(f"{BASE}/accounts/{uuid.uuid4()}",
                                HTTP_AUTHORIZATION=f"Bearer {token}")
        answers[name] = response.status_code
        assert response.status_code == 401, name
        assert set(response.json()) == ERROR_KEYS
    assert anon_api.get(f"{BASE}/accounts/{uuid.uuid4()}", HTTP_AUTHORIZATION=f"Basic {right}"
                        ).status_code == 401
    assert anon_api.get(f"{BASE}/accounts/{uuid.uuid4()}", HTTP_AUTHORIZATION=f"Bearer {right}"
                        ).status_code == 404  # past the token: no such account
    # Constant time: every configured token is compared with hmac.compare_digest, all of
    # them every time (no early exit telling which token matched), and never with ==.
    source = inspect.getsource(config_api.service_token_valid)
    assert "hmac.compare_digest(" in source
    assert "==" not in source and "break" not in source and "return True" not in source
    figure.add(counts=f"{len(wrong) + 1} wrong tokens: all 401 JSON; the check uses "
                      "hmac.compare_digest over every token")


@pytest.mark.django_db
@pytest.mark.figure(12, tried="/internal/v1 with account A's ids mixed with B's: revoke "
                    "A's key under B, authorize with B's request_id and A's key, "
                    "unknown accounts")
def test_internal_objects_cannot_be_reached_through_another_account(api, catalog, figure):
    from tests.runpath import MODEL_7B, customer_create

    owner, other = customer_create(), customer_create()
    tried = 0
    revoke = api.delete(f"{BASE}/accounts/{other.account_id}/api-keys/{owner.key_id}")
    tried += 1
    assert revoke.status_code == 404, revoke.content
    assert ApiKey.objects.get(id=owner.key_id).revoked_at is None
    first = api.post(f"{BASE}/authorize", {"api_key": owner.key, "model": MODEL_7B,
                                           "request_id": "shared-id"}, format="json")
    second = api.post(f"{BASE}/authorize", {"api_key": other.key, "model": MODEL_7B,
                                            "request_id": "shared-id"}, format="json")
    tried += 2
    assert first.status_code == second.status_code == 200
    assert first.json()["hold_id"] != second.json()["hold_id"]
    for path in (f"{BASE}/accounts/{uuid.uuid4()}", f"{BASE}/holds/{uuid.uuid4()}/settle"):
        response = (api.get(path) if "settle" not in path else
                    api.post(path, {"inference_seconds": 1}, format="json"))
        tried += 1
        assert response.status_code == 404, path
    figure.add(counts=f"{tried} cross-account calls: all 404 or their own object")


@pytest.mark.usefixtures("stripe_live")
@pytest.mark.figure(12, tried="/api/v1 with B's key on A's card, purchase and payment ids "
                    "(default, delete, confirm, list)")
def test_customer_objects_cannot_be_reached_with_another_accounts_key(
        make_customer, save_card, figure):
    victim, attacker = make_customer(), make_customer()
    assert save_card(victim).status_code == 201
    assert save_card(attacker).status_code == 201
    created = victim.api.post("/api/v1/purchases", {"amount_usd": "20.00", "confirm": False},
                              format="json")
    assert created.status_code == 201, created.content
    card = Card.objects.get(account=victim.account)
    payment_id = created.data["payment_id"]
    before = (list(Card.objects.filter(account=victim.account).values()),
              list(Payment.objects.filter(account=victim.account).values()),
              Purchase.objects.filter(account=victim.account).count())

    attempts = {
        "card default": attacker.api.post(f"/api/v1/cards/{card.id}/default"),
        "card delete": attacker.api.delete(f"/api/v1/cards/{card.id}"),
        "confirm purchase": attacker.api.post(f"/api/v1/purchases/{payment_id}/confirm"),
    }
    for name, response in attempts.items():
        assert response.status_code == 404, (name, response.content)
        assert response.json()["code"].endswith("not_found"), name
    listed_cards = attacker.api.get("/api/v1/cards").json()
    listed_purchases = attacker.api.get("/api/v1/purchases").json()
    assert str(card.id) not in str(listed_cards)
    assert str(payment_id) not in str(listed_purchases)
    after = (list(Card.objects.filter(account=victim.account).values()),
             list(Payment.objects.filter(account=victim.account).values()),
             Purchase.objects.filter(account=victim.account).count())
    assert after == before
    figure.add(counts=f"{len(attempts) + 2} cross-account calls: 404 or not listed; the "
                      "victim's cards and payments unchanged")


@pytest.mark.django_db
@pytest.mark.figure(12, tried="the same client address presents invalid customer keys to "
                    "/api/v1/, then a valid key; another address with the valid key")
def test_key_guessing_is_rate_limited_per_address(settings, figure):
    from django.core.cache import cache

    from tests.runpath import customer_create

    cache.clear()
    settings.CUSTOMER_KEY_GUESSES_PER_MINUTE = 20
    customer = customer_create()
    client = APIClient(REMOTE_ADDR="203.0.113.7")
    answers = []
    for n in range(25):
        response = client.get("/api/v1/credits", HTTP_AUTHORIZATION=f"Bearer bk_guess_{n}")
        answers.append(response.status_code)
        assert response["Content-Type"].startswith("application/json")
    assert answers == [401] * 20 + [429] * 5
    limited = client.get("/api/v1/credits", HTTP_AUTHORIZATION=f"Bearer {customer.key}")
    assert (limited.status_code, limited.json()["code"]) == (429, "rate_limited")
    assert int(limited["Retry-After"]) >= 1
    elsewhere = APIClient(REMOTE_ADDR="198.51.100.9").get(
        "/api/v1/credits", HTTP_AUTHORIZATION=f"Bearer {customer.key}")
    assert elsewhere.status_code == 200
    # A caller with no address (a Unix socket) is counted, never a server error.
    nowhere = APIClient(REMOTE_ADDR="").get("/api/v1/credits",
                                            HTTP_AUTHORIZATION="Bearer bk_guess_nowhere")
    assert nowhere.status_code == 401
    cache.clear()
    figure.add(counts="25 invalid keys from one address: 20 answered 401, then 429 "
                      "(Retry-After), the valid key too; another address unaffected")


def test_unsigned_webhooks_write_nothing_without_stripe(client, settings, db):
    """(The signed variants are in tests/billing/test_webhooks.py.)"""
    settings.STRIPE_WEBHOOK_SECRET = "whsec_test_secret"
    before = StripeEvent.objects.count()
    for headers in ({}, {"HTTP_STRIPE_SIGNATURE": ""}, {"HTTP_STRIPE_SIGNATURE": "t=1,v1=00"}):
        response = client.post("/stripe/webhook", b'{"id": "evt_1", "type": "x"}',
                               content_type="application/json", **headers)
        assert response.status_code == 400
        assert response.json()["code"] == "invalid_signature"
    assert StripeEvent.objects.count() == before
