from collections import defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

from django.db.models import Count, F, OuterRef, Q, Subquery, Sum, Value
from django.db.models.functions import Coalesce

from accounts.models import FAR_FUTURE, Account
from billing.ledger import Book
from billing.models import (
    BillingProfile,
    Card,
    CreditLot,
    LedgerEntry,
    LedgerTransaction,
    Payment,
    Purchase,
    Subscription,
)


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
    return lot_mismatches(ledger_by_lot=dict(
        LedgerEntry.objects.filter(book=Book.CUSTOMER_CREDIT).values_list("lot_id")
        .annotate(total=Sum("amount_nanos")).values_list("lot_id", "total")))


def lot_mismatches(*, ledger_by_lot: dict) -> Iterator[str]:
    """The lots against their customer_credit legs' sums, {lot_id: total}."""
    ledger_by_lot = dict(ledger_by_lot)
    for lot_id, remaining in CreditLot.objects.values_list("id", "remaining_nanos"):
        in_ledger = ledger_by_lot.pop(lot_id, 0)
        if in_ledger != remaining:
            yield f"lot {lot_id}: remaining {remaining} but ledger says {in_ledger}"
    for lot_id, total in ledger_by_lot.items():
        yield f"ledger credit legs name lot {lot_id}, which does not exist ({total})"


def ledger_account_mismatches() -> Iterator[str]:
    """Per account: ledger credit book == sum of lots' remaining == working balance, the
    receivable book == -receivable, and the working credit expiry == the first lot's."""
    books: dict = defaultdict(int)
    for account_id, book, total in (
        LedgerEntry.objects.filter(book__in=[Book.CUSTOMER_CREDIT, Book.CUSTOMER_RECEIVABLE])
        .values_list("account_id", "book").annotate(total=Sum("amount_nanos"))
        .values_list("account_id", "book", "total")
    ):
        books[(account_id, book)] = total
    return account_mismatches(books=books)


def account_mismatches(*, books: dict) -> Iterator[str]:
    """The accounts against their customer books' sums, {(account_id, book): total}."""
    yield from account_expiry_mismatches()
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


def account_expiry_mismatches() -> Iterator[str]:
    """Accounts whose working credit expiry is not their first lot's with credit left."""
    # The run path's fast path spends the working balance while now < valid_until: later
    # than the first lot's expiry would let expired credit be spent. Compared in the
    # database, which returns only the accounts that differ.
    first_expiry = (CreditLot.objects.filter(account_id=OuterRef("id"), remaining_nanos__gt=0)
                    .order_by("expires_at").values("expires_at")[:1])
    for account_id, valid_until, expected_valid_until in (
            Account.objects.annotate(first=Coalesce(Subquery(first_expiry), Value(FAR_FUTURE)))
            .exclude(credit_valid_until=F("first"))
            .values_list("id", "credit_valid_until", "first")):
        yield (f"account {account_id}: credit valid until {valid_until.isoformat()}, "
               f"but its first credit expires {expected_valid_until.isoformat()}")


def ledger_discrepancies() -> list[str]:
    """Where the ledger, the lots and the accounts' balances disagree (the holds are
    metering's: metering.selectors.books_discrepancies checks everything)."""
    return [*ledger_unbalanced_transactions(), *ledger_lot_mismatches(),
            *ledger_account_mismatches()]


def account_lots(*, account_id) -> list[CreditLot]:
    return list(CreditLot.objects.filter(account_id=account_id).order_by("expires_at", "id"))


def account_spendable_lots(*, account_id, now) -> list[CreditLot]:
    return list(CreditLot.objects.filter(Q(account_id=account_id), Q(remaining_nanos__gt=0),
                                         Q(expires_at__gt=now)).order_by("expires_at", "id"))


# --- Payments -----------------------------------------------------------------------------


def utc_month_bounds(now: datetime) -> tuple[datetime, datetime]:
    """The UTC calendar month `now` falls in, as [start, end)."""
    now = now.astimezone(UTC)
    start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    end = (start + timedelta(days=32)).replace(day=1)
    return start, end


def month_spent_nanos(*, account_id, purpose: str, now: datetime) -> int:
    """What the account's payments for `purpose` charged, or may still charge, this UTC
    month: succeeded and in-flight payments count, failed ones do not."""
    start, end = utc_month_bounds(now)
    total = Payment.objects.filter(
        account_id=account_id, purpose=purpose, created_at__gte=start, created_at__lt=end,
        status__in=[*Payment.IN_FLIGHT, Payment.Status.SUCCEEDED],
    ).aggregate(total=Sum("amount_nanos"))["total"]
    return total or 0


def billing_profile_get(*, account_id):
    """The account's billing profile; an unsaved one with the defaults if it has none."""
    return (BillingProfile.objects.filter(account_id=account_id).first()
            or BillingProfile(account_id=account_id))


def account_cards(*, account_id) -> list:
    return list(Card.objects.filter(account_id=account_id, removed_at__isnull=True)
                .order_by("created_at", "id"))


def account_purchases(*, account_id, limit: int = 100) -> list:
    """Purchases, newest first, with their lot and the Stripe payment behind them."""
    return list(Purchase.objects.filter(account_id=account_id)
                .select_related("lot", "payment", "payment__card")
                .order_by("-purchased_at")[:limit])


def auto_reload_summary(*, account_id, now) -> dict:
    """Auto-reload settings as the customer sees them (the credits read uses this too)."""
    profile = billing_profile_get(account_id=account_id)
    return {
        "enabled": profile.auto_reload_enabled,
        "paused": profile.auto_reload_paused_at is not None,
        "paused_reason": profile.auto_reload_paused_reason,
        "threshold_nanos": profile.auto_reload_threshold_nanos,
        "amount_nanos": profile.auto_reload_amount_nanos,
        "monthly_max_nanos": profile.auto_reload_monthly_max_nanos,
        "card_id": profile.auto_reload_card_id,
        "charged_this_month_nanos": month_spent_nanos(
            account_id=account_id, purpose=Payment.Purpose.AUTO_RELOAD, now=now),
    }


def auto_scale_summary(*, account_id, now) -> dict:
    profile = billing_profile_get(account_id=account_id)
    return {
        "max_monthly_spend_nanos": profile.auto_scale_max_monthly_nanos,
        "charged_this_month_nanos": month_spent_nanos(
            account_id=account_id, purpose=Payment.Purpose.AUTO_SCALE, now=now),
        "card_id": profile.default_card_id,
    }


def account_subscription(*, account_id):
    """The live subscription, else the most recent one, else None."""
    subs = Subscription.objects.filter(account_id=account_id).order_by("-created_at")
    return subs.filter(status__in=Subscription.LIVE_STATUSES).first() or subs.first()
