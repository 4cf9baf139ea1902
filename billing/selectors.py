from collections import defaultdict
from collections.abc import Iterator

from django.db.models import Count, Q, Sum

from accounts.models import Account
from billing.ledger import Book
from billing.models import CreditLot, LedgerEntry, LedgerTransaction


def ledger_unbalanced_transactions() -> Iterator[str]:
    unbalanced = (LedgerEntry.objects.values("transaction_id")
                  .annotate(total=Sum("amount_nanos")).exclude(total=0))
    for row in unbalanced:
        yield f"ledger transaction {row['transaction_id']} sums to {row['total']}, not zero"
    empty = LedgerTransaction.objects.annotate(n=Count("entries")).filter(n=0)
    for txn_id in empty.values_list("id", flat=True):
        yield f"ledger transaction {txn_id} has no entries"


def ledger_lot_mismatches() -> Iterator[str]:
    """Each lot's remaining credit equals the sum of its customer_credit legs."""
    ledger_by_lot = dict(
        LedgerEntry.objects.filter(book=Book.CUSTOMER_CREDIT).values_list("lot_id")
        .annotate(total=Sum("amount_nanos")).values_list("lot_id", "total"))
    for lot_id, remaining in CreditLot.objects.values_list("id", "remaining_nanos"):
        in_ledger = ledger_by_lot.pop(lot_id, 0)
        if in_ledger != remaining:
            yield f"lot {lot_id}: remaining {remaining} but ledger says {in_ledger}"
    for lot_id, total in ledger_by_lot.items():
        yield f"ledger credit legs name lot {lot_id}, which does not exist ({total})"


def ledger_account_mismatches() -> Iterator[str]:
    """Per account: ledger credit book == sum of lots' remaining == working balance, and
    the receivable book == -receivable."""
    books: dict = defaultdict(int)
    for account_id, book, total in (
        LedgerEntry.objects.filter(book__in=[Book.CUSTOMER_CREDIT, Book.CUSTOMER_RECEIVABLE])
        .values_list("account_id", "book").annotate(total=Sum("amount_nanos"))
        .values_list("account_id", "book", "total")
    ):
        books[(account_id, book)] = total
    lots = dict(CreditLot.objects.values_list("account_id")
                .annotate(total=Sum("remaining_nanos")).values_list("account_id", "total"))
    for account_id, balance, receivable in Account.objects.values_list(
            "id", "balance_nanos", "receivable_nanos"):
        ledger_credit = books.get((account_id, Book.CUSTOMER_CREDIT), 0)
        lot_credit = lots.get(account_id, 0)
        if not ledger_credit == lot_credit == balance:
            yield (f"account {account_id}: ledger credit {ledger_credit}, lots {lot_credit}, "
                   f"working balance {balance}")
        ledger_receivable = -books.get((account_id, Book.CUSTOMER_RECEIVABLE), 0)
        if ledger_receivable != receivable:
            yield (f"account {account_id}: ledger receivable {ledger_receivable}, "
                   f"working receivable {receivable}")


def ledger_discrepancies() -> list[str]:
    """Everything `ledger_check` verifies; an empty list means the books agree."""
    from metering.selectors import hold_discrepancies

    return [*ledger_unbalanced_transactions(), *ledger_lot_mismatches(),
            *ledger_account_mismatches(), *hold_discrepancies()]


def account_lots(*, account_id) -> list[CreditLot]:
    return list(CreditLot.objects.filter(account_id=account_id).order_by("expires_at", "id"))


def account_spendable_lots(*, account_id, now) -> list[CreditLot]:
    return list(CreditLot.objects.filter(Q(account_id=account_id), Q(remaining_nanos__gt=0),
                                         Q(expires_at__gt=now)).order_by("expires_at", "id"))


def auto_reload_summary(*, account: Account) -> dict:
    """The account's auto-reload settings as the customer sees them."""
    from django.conf import settings

    threshold = account.auto_reload_threshold_nanos
    return {
        "enabled": threshold is not None,
        "threshold_nanos": threshold if threshold is not None
        else settings.AUTO_RELOAD_DEFAULT_THRESHOLD_NANOS,
        "amount_nanos": settings.AUTO_RELOAD_DEFAULT_AMOUNT_NANOS,
        "monthly_max_nanos": settings.AUTO_RELOAD_DEFAULT_MONTHLY_MAX_NANOS,
    }
