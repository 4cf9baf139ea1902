"""A charge or an expiry that takes the balance from at or above the auto-reload threshold
to below it records one LowBalanceEvent, in the same transaction."""

from datetime import timedelta

import pytest

from accounts.models import Account
from billing.credit import credit_debit, credit_grant, credit_lots_expire_due
from billing.errors import InsufficientCredit
from billing.models import LowBalanceEvent
from tests.factories import AccountFactory
from tests.support import T0, USD, assert_books_agree, usd

pytestmark = pytest.mark.django_db


@pytest.fixture
def account():
    """Given $5 (the $1 free grant and a $4 grant expiring at T0+5d), auto-reload at $3."""
    account = AccountFactory(now=T0)
    credit_grant(account_id=account.id, amount_nanos=4 * USD, reason="short",
                 expires_at=T0 + timedelta(days=5), now=T0)
    Account.objects.filter(id=account.id).update(auto_reload_threshold_nanos=3 * USD)
    return account


def events(account) -> list[tuple[int, int, int]]:
    return list(LowBalanceEvent.objects.filter(account=account).order_by("created_at")
                .values_list("threshold_nanos", "balance_before_nanos", "balance_after_nanos"))


def test_a_debit_down_to_the_threshold_records_nothing(account):
    credit_debit(account_id=account.id, amount_nanos=2 * USD, reason="use", now=T0)
    assert events(account) == []


def test_a_debit_crossing_the_threshold_records_one_event(account):
    credit_debit(account_id=account.id, amount_nanos=2 * USD + 1, reason="use", now=T0)
    # Further debits below the threshold are not new crossings.
    credit_debit(account_id=account.id, amount_nanos=USD, reason="use", now=T0)

    assert events(account) == [(3 * USD, 5 * USD, 3 * USD - 1)]
    assert_books_agree(account.id, 2 * USD - 1)


def test_an_expiry_crossing_the_threshold_records_one_event(account):
    credit_lots_expire_due(account_id=account.id, now=T0 + timedelta(days=5))

    assert events(account) == [(3 * USD, 5 * USD, 1 * USD)]
    assert_books_agree(account.id, USD)


def test_no_event_while_auto_reload_is_off(account):
    Account.objects.filter(id=account.id).update(auto_reload_threshold_nanos=None)
    credit_debit(account_id=account.id, amount_nanos=usd("4.5"), reason="use", now=T0)
    credit_lots_expire_due(account_id=account.id, now=T0 + timedelta(days=5))
    assert events(account) == []


def test_a_refused_debit_records_no_event(account):
    with pytest.raises(InsufficientCredit):
        credit_debit(account_id=account.id, amount_nanos=6 * USD, reason="too much", now=T0)
    assert events(account) == []
