"""A dependency that cannot be reached answers the contract's JSON 503, never Django's HTML
page: the gateway can tell an outage it should retry from a bug. Here the cache (Redis,
which counts the free plan's closed-model requests) points at a port nobody listens on: a
real client, a real refused connection."""

import socket

import pytest
from django.core.cache import caches

from tests.runpath import (
    MODEL_7B,
    MODEL_CLOSED_CHEAP,
    authorize_body,
    customer_create,
    world_snapshot,
)
from tests.support import assert_error

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("catalog")]


def unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def redis_unreachable(settings):
    settings.CACHES = {"default": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": f"redis://127.0.0.1:{unused_port()}/0",
    }}
    caches.close_all()
    yield
    caches.close_all()


def test_a_closed_model_run_that_needs_redis_answers_503_json_and_writes_nothing(
        api, redis_unreachable):
    # Given a free-plan account (its closed-model requests are counted in Redis).
    customer = customer_create()
    before = world_snapshot(customer.account_id)

    # When Redis cannot be reached and the gateway asks to run a closed model.
    response = api.post("/internal/v1/authorize",
                        authorize_body(customer, MODEL_CLOSED_CHEAP), format="json")

    # Then the answer is the contract's 503, retryable, and nothing was reserved.
    body = assert_error(response, 503, "service_unavailable")
    assert response["Retry-After"] == "1"
    assert "retry" in body["message"]
    assert world_snapshot(customer.account_id) == before


def test_an_open_model_run_does_not_need_redis(api, redis_unreachable):
    customer = customer_create()

    response = api.post("/internal/v1/authorize", authorize_body(customer, MODEL_7B),
                        format="json")

    assert response.status_code == 200, response.json()


@pytest.mark.parametrize("path", ["/stripe/webhook", "/api/v1/purchases",
                                  "/internal/v1/authorize"])
def test_a_body_over_the_size_limit_is_json_on_every_machine_path(client, settings, path):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1_000

    response = client.post(path, "x" * 2_000, content_type="application/json",
                           HTTP_AUTHORIZATION="Bearer not-checked-before-the-body")

    assert response["Content-Type"].startswith("application/json"), response.content
    assert response.json()["status"] == response.status_code
