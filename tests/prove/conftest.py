"""The figures reuse the run path's fixtures (tests/runpath.py) and the Stripe set-up
(tests/billing/conftest.py: localstripe, webhooks delivered and recorded)."""

from tests.billing.conftest import (
    _webhooks_registered,
    delivery_recorder,
    localstripe_url,
    make_customer,
    save_card,
    service_webhook_paused,
    service_webhook_url,
    stripe_client,
    stripe_live,
)
from tests.runpath import catalog, eager_tasks, fresh_caches

__all__ = ["_webhooks_registered", "catalog", "delivery_recorder", "eager_tasks",
           "fresh_caches", "localstripe_url", "make_customer", "save_card",
           "service_webhook_paused", "service_webhook_url", "stripe_client", "stripe_live"]
