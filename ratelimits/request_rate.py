"""Request-rate limits: closed-model requests per second per account, as the account's
plan allows (the free plan: 10/s), counted in the shared cache (Redis) by
django-ratelimit, so every process of the service counts together."""

from uuid import UUID

from django_ratelimit.core import get_usage

from ratelimits.errors import RateLimited

CLOSED_MODEL_GROUP = "closed-model-requests"


def closed_model_request_count(*, account_id: UUID, requests_per_second: int) -> None:
    """Count one closed-model request of the account; raise RateLimited past the plan's
    rate. A request refused here is counted all the same, as the provider would."""
    usage = get_usage(None, group=CLOSED_MODEL_GROUP, rate=f"{requests_per_second}/s",
                      key=lambda group, request: str(account_id), increment=True)
    if usage is not None and usage["should_limit"]:
        raise RateLimited(extra={"limit_per_second": requests_per_second},
                          headers={"Retry-After": str(max(1, usage["time_left"]))})
