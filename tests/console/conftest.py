import pytest
from django.test import Client

from tests.console.support import otp_login, staff_user
from tests.runpath import catalog, eager_tasks, fresh_caches

__all__ = ["catalog", "eager_tasks", "fresh_caches"]


@pytest.fixture
def support():
    return staff_user("support-agent@example.com", group="Support")


@pytest.fixture
def finance():
    return staff_user("finance-agent@example.com", group="Finance")


@pytest.fixture
def support_client(support):
    return otp_login(Client(), support)


@pytest.fixture
def finance_client(finance):
    return otp_login(Client(), finance)
