"""The ledger: append-only, double-entry, in integer nano-dollars.

Design
------
Every movement of value is one `LedgerTransaction` with two or more `LedgerEntry` legs.
A leg says that `amount_nanos` flowed into a *book* (negative: out of it); the legs of a
transaction always sum to zero, so value is never created or destroyed, only moved.

Books: each customer has `customer_credit` (what it may still spend; one leg per credit
lot touched, so every lot is traceable) and `customer_receivable` (usage its credit could
not cover; negative while it owes). The platform's books are where value comes from or
goes to: `stripe_cash` and `external_cash` (money received: negative as it flows in),
`promotional` (grants), `open_revenue`, `provider_passthrough`, `platform_fee`,
`byok_fee`, `expired_credit`, `refund_shortfall` and `staff_adjustment`.

Invariants, checked by `manage.py ledger_check`:
- every transaction sums to zero (on PostgreSQL a deferred constraint trigger refuses to
  commit one that does not, and other triggers refuse UPDATE and DELETE);
- per lot: the sum of its `customer_credit` legs equals its remaining credit;
- per account: the `customer_credit` book equals the sum of its lots' remaining credit
  equals `Account.balance_nanos` (the balance the run path reads), and the receivable
  book equals minus `Account.receivable_nanos`.

Corrections are new transactions, never edits.
"""

from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

from billing.models import LedgerEntry, LedgerTransaction

Book = LedgerEntry.Book
Kind = LedgerTransaction.Kind


class UnbalancedTransaction(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Leg:
    book: str
    amount_nanos: int
    account_id: UUID | None = None
    lot_id: UUID | None = None


def ledger_post(*, kind: str, legs: list[Leg], now: datetime, account_id: UUID | None = None,
                memo: str = "") -> LedgerTransaction:
    """Write one balanced transaction. Call inside the caller's atomic block."""
    legs = [leg for leg in legs if leg.amount_nanos != 0]
    if not legs:
        raise UnbalancedTransaction("a ledger transaction needs at least one non-zero leg")
    total = sum(leg.amount_nanos for leg in legs)
    if total != 0:
        raise UnbalancedTransaction(f"legs sum to {total}, not zero")
    txn = LedgerTransaction.objects.create(account_id=account_id, kind=kind, memo=memo[:255],
                                           created_at=now)
    LedgerEntry.objects.bulk_create(
        LedgerEntry(transaction=txn, book=leg.book, amount_nanos=leg.amount_nanos,
                    account_id=leg.account_id, lot_id=leg.lot_id)
        for leg in legs
    )
    return txn
