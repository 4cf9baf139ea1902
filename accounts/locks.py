"""Row locks, taken in one place.

Every write to an account's money (its balance, lots, holds, purchases and ledger) runs
inside a transaction that first locks the account row, so lots and holds never need a
lock order of their own. Several accounts are locked in primary-key order. The run path's
single-statement fast path takes the same row lock implicitly, with its UPDATE.

Payment decisions (Stripe charges, auto-reload, auto-scale, plan changes) lock the
account's billing profile row first (billing/locks.py, the one other place), then payment
rows, then the account row: never the other way round, and the run path never takes the
profile lock at all.
"""

from collections.abc import Iterable
from uuid import UUID

from accounts.models import Account


def account_lock(*, account_id: UUID) -> Account:
    return Account.objects.select_for_update().get(id=account_id)


def accounts_lock(*, account_ids: Iterable[UUID]) -> list[Account]:
    return list(
        Account.objects.select_for_update().filter(id__in=set(account_ids)).order_by("id")
    )
