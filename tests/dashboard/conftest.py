"""Dashboard test set-up: customers who can sign in (verified email, a password), a
signed-in client per customer, and settled runs made through the run path."""

import uuid
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

import pytest
from allauth.account.models import EmailAddress
from django.test import Client

from accounts.models import Account, ApiKey
from metering.authorize import hold_authorize
from metering.settle import Usage, hold_settle
from tests.runpath import (
    MODEL_7B,
    MODEL_CLOSED,
    MODEL_CLOSED_CHEAP,
    catalog,
    customer_create,
    eager_tasks,
    fresh_caches,
)

__all__ = ["catalog", "eager_tasks", "fresh_caches"]

PASSWORD = "a-long-customer-passphrase-7"


@dataclass
class Customer:
    account_id: uuid.UUID
    email: str
    key: str
    key_id: uuid.UUID
    client: Client

    def account(self) -> Account:
        return Account.objects.get(id=self.account_id)

    def api_key(self) -> ApiKey:
        return ApiKey.objects.get(id=self.key_id)


def customer_signed_in(*, purchased_usd=None, now: datetime | None = None,
                       plan: str | None = None) -> Customer:
    made = customer_create(purchased_usd=purchased_usd, now=now, plan=plan)
    account = made.account()
    user = account.user
    user.set_password(PASSWORD)
    user.save(update_fields=["password"])
    EmailAddress.objects.create(user=user, email=user.email, verified=True, primary=True)
    client = Client()
    client.force_login(user)
    return Customer(account_id=account.id, email=user.email, key=made.key, key_id=made.key_id,
                    client=client)


def run_settled(customer: Customer, *, model_id: str = MODEL_7B, seconds: int = 10,
                input_tokens: int = 1000, output_tokens: int = 500,
                now: datetime | None = None, key: str | None = None) -> None:
    """One run authorized and settled, as the gateway reports it."""
    auth = hold_authorize(api_key=key or customer.key, model_id=model_id,
                          request_id=f"req-{uuid.uuid4().hex}", now=now)
    if model_id in (MODEL_CLOSED, MODEL_CLOSED_CHEAP):
        usage = Usage(input_tokens=input_tokens, output_tokens=output_tokens)
    else:
        usage = Usage(inference_seconds=Decimal(seconds))
    hold_settle(hold_id=auth.hold_id, usage=usage, now=now)


@pytest.fixture
def customer(db, catalog):
    return customer_signed_in()


@pytest.fixture
def other_customer(db, catalog):
    return customer_signed_in()


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings):
    # Hashing strength is Django's business; these tests sign in many times.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
