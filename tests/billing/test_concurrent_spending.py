"""Concurrent spends from one account, on real connections, never overspend."""

import pytest

from billing.credit import credit_debit, credit_grant
from billing.errors import InsufficientCredit
from billing.models import CreditLot
from tests.factories import AccountFactory
from tests.support import USD, assert_books_agree, run_concurrently, usd

pytestmark = pytest.mark.django_db(transaction=True, serialized_rollback=True)

THREADS = 8
AFFORDABLE = 5  # the balance covers exactly this many debits
DEBIT = usd("0.3")


@pytest.mark.parametrize("attempt", range(3))
def test_racing_debits_admit_exactly_what_the_balance_covers(attempt):
    # Given an account holding exactly 5 debits' worth, spread over two lots: the $1 free
    # grant and a $0.50 grant.
    account = AccountFactory()
    credit_grant(account_id=account.id, amount_nanos=AFFORDABLE * DEBIT - USD, reason="top-up")
    assert_books_agree(account.id, AFFORDABLE * DEBIT)

    # When 8 threads, each on its own connection, debit at the same moment.
    results = run_concurrently([
        lambda: credit_debit(account_id=account.id, amount_nanos=DEBIT, reason="race")
        for _ in range(THREADS)
    ])

    # Then exactly 5 succeed, the rest are refused for want of credit, and nothing else
    # went wrong.
    succeeded = [r for r in results if r == DEBIT]
    refused = [r for r in results if isinstance(r, InsufficientCredit)]
    assert (len(succeeded), len(refused)) == (AFFORDABLE, THREADS - AFFORDABLE), results
    # The balance ends at exactly zero and the ledger, the lots and the row agree.
    assert_books_agree(account.id, 0)
    assert not CreditLot.objects.filter(account=account, remaining_nanos__gt=0).exists()
