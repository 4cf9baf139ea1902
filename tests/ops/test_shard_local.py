"""The claim behind sharding by account (README, "Beyond one machine"): every statement
of the run path that touches a table distributed by account carries the account id, so a
Citus coordinator routes it to the one shard that holds the account.

Every statement the service sends to PostgreSQL during the run path's calls is captured
at the driver (psycopg), below Django, so the run path's own raw statements are seen too.
The statements keyed by the hold id alone are the known exceptions, pinned here so that no
other can appear unnoticed (the README says how they become shard-local)."""

import json
import re
from datetime import timedelta
from uuid import UUID

import psycopg
import pytest
import time_machine
from django.utils import timezone

from tests.conftest import INTERNAL_TOKEN
from tests.runpath import MODEL_7B, authorize_body, customer_create

pytestmark = pytest.mark.django_db

# Distributed by account: the table and its distribution column.
DISTRIBUTED_BY_ACCOUNT = {
    "accounts_account": "id",
    "metering_hold": "account_id",
    "metering_usagerecord": "account_id",
    "billing_creditlot": "account_id",
    "billing_ledgertransaction": "account_id",
    "billing_ledgerentry": "account_id",
    "billing_lowbalanceevent": "account_id",
    "billing_purchase": "account_id",
    "billing_payment": "account_id",
}
# Reference tables (a copy on every node, read locally): the catalog, prices, tiers, plans
# and the API keys (looked up by the hash of the key the gateway presents).
REFERENCE = {"metering_inferencemodel", "metering_sizeclass", "metering_pricingpolicy",
             "ratelimits_tier", "billing_plan", "accounts_apikey"}

_TABLE_RE = re.compile(r'(?:FROM|JOIN|UPDATE|INTO)\s+"?([a-z_]+)"?', re.IGNORECASE)
_CONTROL_RE = re.compile(r"^\s*(SAVEPOINT|RELEASE|ROLLBACK|BEGIN|COMMIT|SET|SHOW)\b", re.I)


@pytest.fixture
def statements(monkeypatch):
    captured: list[tuple[str, object]] = []
    original = psycopg.Cursor.execute

    def execute(self, query, params=None, **kwargs):
        text = query if isinstance(query, str) else query.as_string(self)
        captured.append((text, params))
        return original(self, query, params, **kwargs)

    monkeypatch.setattr(psycopg.Cursor, "execute", execute)
    return captured


def _values(params) -> list:
    if params is None:
        return []
    return list(params.values()) if isinstance(params, dict) else list(params)


def _carries(params, account_id: UUID) -> bool:
    return any(value in (account_id, str(account_id), account_id.hex)
               for value in _values(params))


def keyed_by_account(sql: str, params, account_id: UUID) -> bool:
    """The statement constrains a distribution column with the account id it was given."""
    column = r'(?:"?accounts_account"?\."?id"?|"?account_id"?|\bid\b)'
    return _carries(params, account_id) and re.search(
        column + r"\s*=\s*(%s|%\(account_id\)s|%\(\w+\)s|\$\d+)", sql) is not None


def classify(captured, account_id: UUID) -> tuple[list, list]:
    keyed, unkeyed = [], []
    for sql, params in captured:
        if _CONTROL_RE.match(sql):
            continue
        tables = {t.lower() for t in _TABLE_RE.findall(sql)}
        distributed = tables & set(DISTRIBUTED_BY_ACCOUNT)
        unknown = tables - set(DISTRIBUTED_BY_ACCOUNT) - REFERENCE - {"acct", "hold",
                                                                     "metering_settle"}
        assert not unknown, f"a table the README does not place: {unknown}\n{sql}"
        if not distributed and "metering_settle" not in sql:
            continue  # reference tables only: local on every node
        (keyed if keyed_by_account(sql, params, account_id) else unkeyed).append(sql)
    return keyed, unkeyed


def post(client, path, body):
    return client.post(path, data=json.dumps(body), content_type="application/json",
                       HTTP_AUTHORIZATION=f"Bearer {INTERNAL_TOKEN}")


def test_every_run_path_statement_on_an_account_table_carries_the_account_id(
        client, catalog, statements):
    customer = customer_create()  # the free tier: one run at a time
    statements.clear()

    # Authorize, fast path (one statement), and again with the same request_id (the
    # slow path: lock, bring current, return the existing hold)
    first_body = authorize_body(customer, MODEL_7B)
    first = post(client, "/internal/v1/authorize", first_body)
    assert first.status_code == 200
    assert post(client, "/internal/v1/authorize", first_body).json()["hold_id"] == \
        first.json()["hold_id"]
    with time_machine.travel(timezone.now() + timedelta(minutes=5)):
        # The slow path with upkeep: the first run's lease lapsed and holds the only
        # slot; the next authorize frees it and reserves
        second = post(client, "/internal/v1/authorize", authorize_body(customer, MODEL_7B))
        assert second.status_code == 200
        authorize_captured = list(statements)
        statements.clear()
        hold = second.json()["hold_id"]
        assert post(client, f"/internal/v1/holds/{hold}/heartbeat", {}).status_code == 200
        heartbeat_captured = list(statements)
        statements.clear()
        assert post(client, f"/internal/v1/holds/{hold}/settle",
                    {"inference_seconds": 4.2}).status_code == 200
        settle_captured = list(statements)
        third = post(client, "/internal/v1/authorize", authorize_body(customer, MODEL_7B))
        assert third.status_code == 200
        statements.clear()
        assert post(client, f"/internal/v1/holds/{third.json()['hold_id']}/release",
                    {}).status_code == 200
        release_captured = list(statements)

    account_id = customer.account_id
    keyed, unkeyed = classify(authorize_captured, account_id)
    assert unkeyed == [], "authorize statements not keyed by the account:\n" + "\n".join(
        unkeyed)
    # fast path twice, and the slow path's lock, upkeep (the lapsed hold freed) and reads
    assert sum("WITH acct AS" in s for s in keyed) >= 3
    assert any('UPDATE "metering_hold"' in s or "UPDATE metering_hold" in s for s in keyed)
    assert any("FOR UPDATE" in s and "accounts_account" in s for s in keyed)

    # Heartbeat, settle and release name only the hold: the one statement each that finds
    # the hold by its id is the known exception; everything after it is keyed
    _, unkeyed = classify(heartbeat_captured, account_id)
    assert len(unkeyed) == 1 and 'UPDATE "metering_hold"' in unkeyed[0], unkeyed
    _, unkeyed = classify(settle_captured, account_id)
    assert len(unkeyed) == 1 and "metering_settle(" in unkeyed[0], unkeyed
    keyed, unkeyed = classify(release_captured, account_id)
    assert len(unkeyed) == 1 and 'SELECT "metering_hold"."account_id"' in unkeyed[0], unkeyed
    assert len(keyed) == 4, keyed  # the account's lock, the hold, its update, the account's
