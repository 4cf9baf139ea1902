"""Factories. Accounts, keys and credit are made through the services, the way the API
makes them, so the books agree from the first line of every test."""

from decimal import Decimal

import factory
from factory.django import DjangoModelFactory

from accounts.models import Account, ApiKey
from accounts.services import api_key_create
from billing.account_opening import account_create
from metering.models import InferenceModel


class AccountFactory(factory.Factory):
    """An account opened as POST /accounts opens one: free plan, free grant, ledger."""

    class Meta:
        model = Account

    email = factory.Sequence(lambda n: f"customer{n}@example.com")
    now = None

    @classmethod
    def _create(cls, model_class, *, email, now):
        account, created = account_create(email=email, now=now)
        assert created
        return account


class ApiKeyFactory(factory.Factory):
    """A customer key; the full secret, shown once, is on `.secret`."""

    class Meta:
        model = ApiKey

    account = factory.SubFactory(AccountFactory)
    name = factory.Sequence(lambda n: f"key-{n}")
    expires_at = None
    now = None

    @classmethod
    def _create(cls, model_class, *, account, name, expires_at, now):
        api_key, secret = api_key_create(account_id=account.id, name=name,
                                         expires_at=expires_at, now=now)
        api_key.secret = secret
        return api_key


class OpenModelFactory(DjangoModelFactory):
    class Meta:
        model = InferenceModel

    id = factory.Sequence(lambda n: f"example-org/open-model-{n}")
    kind = InferenceModel.Kind.OPEN
    params_b = Decimal(7)


class ClosedModelFactory(DjangoModelFactory):
    class Meta:
        model = InferenceModel

    id = factory.Sequence(lambda n: f"example-provider/closed-model-{n}")
    kind = InferenceModel.Kind.CLOSED
    provider = "openai"
    input_nanos_per_mtok = 2_500_000_000
    output_nanos_per_mtok = 10_000_000_000
