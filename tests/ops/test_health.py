"""Liveness and readiness, as the load balancer sees them."""

import requests

from tests.conftest import INTERNAL_TOKEN
from tests.ops.conftest import wait_for


def test_healthz_answers_without_a_token_and_touches_nothing(client):
    # No database access is allowed in this test: a query would fail it.
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.content == b"ok"


def test_readyz_names_each_part_when_all_answer(client, db):
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.json() == {"ready": True, "checks": {"database": "ok", "redis": "ok"}}
    assert response["X-Request-Id"]


def _readyz(server) -> requests.Response:
    return requests.get(f"{server.url}/readyz", timeout=10)


def test_readyz_follows_postgresql_and_redis_going_away_and_coming_back(
        private_postgres, private_redis, production_server):
    # Given the service as production runs it (deploy/serve.py), on a PostgreSQL
    # and a Redis of its own
    server = production_server(DATABASE_URL=private_postgres.url, REDIS_URL=private_redis.url,
                             BILLING_INTERNAL_TOKENS=INTERNAL_TOKEN, READYZ_TIMEOUT_SECONDS="2")
    first = _readyz(server)
    assert first.status_code == 200, first.text
    assert first.json()["checks"] == {"database": "ok", "redis": "ok"}

    # When PostgreSQL stops: 503, naming the database and only the database, promptly,
    # in the contract's error shape; liveness is unaffected
    private_postgres.stop()
    down = _readyz(server)
    assert down.status_code == 503, down.text
    body = down.json()
    assert body["code"] == "service_unavailable"
    assert body["failing"] == ["database"]
    assert body["checks"]["redis"] == "ok"
    assert "database" in body["message"]
    assert down.headers["Retry-After"]
    assert down.elapsed.total_seconds() < 5
    assert requests.get(f"{server.url}/healthz", timeout=5).status_code == 200

    # Then back to 200 once it is back, with no restart of the service
    private_postgres.start()
    wait_for(lambda: _readyz(server).status_code == 200, timeout=30,
             message="readyz to recover after PostgreSQL came back")

    # And the same for Redis
    private_redis.stop()
    down = _readyz(server)
    assert down.status_code == 503, down.text
    assert down.json()["failing"] == ["redis"]
    assert down.json()["checks"]["database"] == "ok"
    private_redis.start_on_same_port()
    wait_for(lambda: _readyz(server).status_code == 200, timeout=30,
             message="readyz to recover after Redis came back")
    assert server.process.poll() is None
