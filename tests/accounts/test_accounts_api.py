"""Provisioning accounts: create (idempotent by email), read, suspend and reinstate."""

import uuid

import pytest
from django.test import Client

from accounts.models import Account, User
from tests.conftest import INTERNAL_TOKEN
from tests.factories import AccountFactory
from tests.support import BASE, USD, assert_books_agree, db_counts, run_concurrently

ACCOUNT_KEYS = {"account_id", "email", "plan", "status", "balance_usd", "held_usd",
                "available_usd", "purchased_last_4_weeks_usd", "tier", "concurrency"}


@pytest.mark.django_db
class TestCreate:
    def test_a_new_email_opens_an_account_on_the_free_plan(self, api):
        before = db_counts()

        response = api.post(f"{BASE}/accounts", {"email": "a@example.com"}, format="json")

        assert response.status_code == 201
        body = response.json()
        account = Account.objects.get(id=body["account_id"])
        assert body == {"account_id": str(account.id), "email": "a@example.com",
                        "plan": "free", "balance_usd": "1.000000000"}
        assert (account.plan_id, account.status) == ("free", "active")
        after = db_counts()
        assert {k: after[k] - before[k] for k in after} == {
            "users": 1, "accounts": 1, "lots": 1, "purchases": 0, "ledger_transactions": 1,
            "ledger_entries": 2, "api_keys": 0, "models": 0, "low_balance_events": 0}
        assert_books_agree(account.id, USD)

    @pytest.mark.parametrize("again", ["a@example.com", "A@Example.COM", "  a@EXAMPLE.com "])
    def test_the_same_email_again_in_any_case_returns_the_same_account(self, api, again):
        first = api.post(f"{BASE}/accounts", {"email": "A@example.com"}, format="json")
        assert first.status_code == 201
        before = db_counts()

        response = api.post(f"{BASE}/accounts", {"email": again}, format="json")

        assert response.status_code == 200
        assert response.json() == first.json()
        assert response.json()["email"] == "a@example.com"
        assert db_counts() == before

    def test_the_same_email_again_shows_the_current_balance(self, api):
        first = api.post(f"{BASE}/accounts", {"email": "b@example.com"}, format="json").json()
        api.post(f"{BASE}/accounts/{first['account_id']}/purchases",
                 {"amount_usd": "4.5", "reference": "X"}, format="json")

        again = api.post(f"{BASE}/accounts", {"email": "b@example.com"}, format="json")

        assert again.status_code == 200
        assert again.json()["balance_usd"] == "5.500000000"

    def test_an_existing_user_without_an_account_gets_one(self, api):
        user = User.objects.create_user(email="staff@example.com")
        response = api.post(f"{BASE}/accounts", {"email": "Staff@example.com"}, format="json")
        assert response.status_code == 201
        assert Account.objects.get(id=response.json()["account_id"]).user == user


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_racing_creates_with_one_email_make_one_account():
    emails = ["race@example.com", "RACE@example.com", "Race@Example.com"] * 2

    def create(email):
        client = Client(headers={"authorization": f"Bearer {INTERNAL_TOKEN}"})
        response = client.post(f"{BASE}/accounts", {"email": email},
                                content_type="application/json")
        return response.status_code, response.json()

    results = run_concurrently([lambda e=e: create(e) for e in emails])

    assert sorted(status for status, _ in results) == [200] * 5 + [201], results
    assert len({body["account_id"] for _, body in results}) == 1
    assert User.objects.count() == Account.objects.count() == 1
    assert_books_agree(results[0][1]["account_id"], USD)


@pytest.mark.django_db
class TestRead:
    def test_an_account_reads_as_the_contract_shows_it(self, api):
        account = AccountFactory(email="read@example.com")

        response = api.get(f"{BASE}/accounts/{account.id}")

        assert response.status_code == 200
        assert response.json() == {
            "account_id": str(account.id), "email": "read@example.com", "plan": "free",
            "status": "active", "balance_usd": "1.000000000", "held_usd": "0.000000000",
            "available_usd": "1.000000000", "purchased_last_4_weeks_usd": "0.000000000",
            "tier": {"name": "Tier 0", "max_params_b": 7, "concurrency": 1},
            "concurrency": {"in_use": 0, "limit": 1},
        }

    def test_an_unknown_account_is_not_found(self, api):
        response = api.get(f"{BASE}/accounts/{uuid.uuid4()}")
        assert response.status_code == 404
        assert response.json()["code"] == "account_not_found"


@pytest.mark.django_db
class TestSuspend:
    def test_suspend_and_reinstate(self, api):
        account = AccountFactory()
        url = f"{BASE}/accounts/{account.id}"
        before = db_counts()

        suspended = api.patch(url, {"status": "suspended", "reason": "fraud review"},
                              format="json")

        assert suspended.status_code == 200
        body = suspended.json()
        assert set(body) == ACCOUNT_KEYS
        assert body["status"] == "suspended"
        assert body == api.get(url).json()
        account.refresh_from_db()
        assert (account.status, account.status_reason) == ("suspended", "fraud review")
        # The credit is kept.
        assert body["balance_usd"] == "1.000000000"

        reinstated = api.patch(url, {"status": "active"}, format="json")

        assert reinstated.status_code == 200
        assert reinstated.json()["status"] == "active"
        account.refresh_from_db()
        assert (account.status, account.status_reason) == ("active", "")
        assert db_counts() == before
        assert_books_agree(account.id, USD)

    def test_suspending_twice_keeps_it_suspended_with_the_latest_reason(self, api):
        account = AccountFactory()
        url = f"{BASE}/accounts/{account.id}"
        api.patch(url, {"status": "suspended", "reason": "dispute"}, format="json")
        response = api.patch(url, {"status": "suspended", "reason": "fraud review"},
                             format="json")
        assert response.json()["status"] == "suspended"
        account.refresh_from_db()
        assert account.status_reason == "fraud review"
