"""Credit: lots, grants, purchases, burn-down (soonest-expiring first) and expiry.

All functions that move money lock the account first (accounts.locks), write the lots
and the ledger together, and keep the account's working balance equal to both."""

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from uuid import UUID

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import F, Min, Value
from django.db.models.functions import Coalesce
from django.utils import timezone

from accounts.locks import account_lock
from accounts.models import FAR_FUTURE, Account
from billing.errors import InsufficientCredit, InvalidExpiry
from billing.ledger import Book, Kind, Leg, ledger_post
from billing.low_balance import low_balance_record
from billing.models import CreditLot, Plan, Purchase
from billing.notifications import purchase_receipt_email_enqueue
from config.api import ApplicationError
from ratelimits.tiers import account_tier_apply, tier_window_start

logger = logging.getLogger(__name__)

Source = CreditLot.Source


def _credit_valid_until_expression(account_id: UUID):
    # The credit is all live until its first lot expires. The settle on PostgreSQL sets
    # the same column in SQL (metering/settle_sql.py, the acct step).
    return Coalesce(
        CreditLot.objects.filter(account_id=account_id, remaining_nanos__gt=0)
        .values("account_id")
        .annotate(first=Min("expires_at"))
        .values("first")[:1],
        Value(FAR_FUTURE),
    )


def account_balance_apply(*, account: Account, balance_delta: int = 0,
                          receivable_delta: int = 0) -> None:
    """Apply a change of lot credit to the locked account's working state. Call after the
    lots were written: the earliest expiry is recomputed from them."""
    Account.objects.filter(id=account.id).update(
        balance_nanos=F("balance_nanos") + balance_delta,
        receivable_nanos=F("receivable_nanos") + receivable_delta,
        credit_valid_until=_credit_valid_until_expression(account.id),
    )
    account.refresh_from_db(fields=["balance_nanos", "receivable_nanos", "credit_valid_until"])


@dataclass(frozen=True, slots=True)
class Consumption:
    legs: list[Leg]  # customer_credit legs, one per lot touched (negative)
    covered_nanos: int
    shortfall_nanos: int


def credit_consume(*, account: Account, amount_nanos: int, now: datetime) -> Consumption:
    """Take `amount_nanos` from the locked account's live lots, soonest-expiring first.
    Returns the ledger legs for the caller's transaction; the caller applies the balance
    change. Lots that expired are never touched, recorded or not."""
    legs: list[Leg] = []
    left = amount_nanos
    if left > 0:
        lots = (
            CreditLot.objects.filter(account=account, remaining_nanos__gt=0, expires_at__gt=now)
            .order_by("expires_at", "id")
            .values_list("id", "remaining_nanos")
        )
        for lot_id, remaining in lots:
            take = min(remaining, left)
            CreditLot.objects.filter(id=lot_id).update(remaining_nanos=F("remaining_nanos") - take)
            legs.append(Leg(Book.CUSTOMER_CREDIT, -take, account.id, lot_id))
            left -= take
            if left == 0:
                break
    return Consumption(legs=legs, covered_nanos=amount_nanos - left, shortfall_nanos=left)


def _receivable_recover(*, account: Account, now: datetime) -> None:
    """Usage the credit could not cover is paid from the next credit that arrives."""
    if account.receivable_nanos <= 0:
        return
    consumed = credit_consume(account=account, amount_nanos=account.receivable_nanos, now=now)
    if consumed.covered_nanos == 0:
        return
    ledger_post(
        kind=Kind.RECOVERY, account_id=account.id, now=now,
        memo="Unpaid usage recovered from new credit",
        legs=[*consumed.legs,
              Leg(Book.CUSTOMER_RECEIVABLE, consumed.covered_nanos, account.id)],
    )
    account_balance_apply(account=account, balance_delta=-consumed.covered_nanos,
                          receivable_delta=-consumed.covered_nanos)


def _lot_add(*, account: Account, source: str, amount_nanos: int, funded_by: list[Leg],
             kind: str, memo: str, now: datetime, granted_at: datetime | None = None,
             expires_at: datetime | None = None, reason: str = "",
             grant_key: str | None = None) -> tuple[CreditLot, bool]:
    """Add a lot to the locked account and post its ledger transaction. `funded_by` are
    the legs the credit comes from (they sum to -amount). With a `grant_key`, a second
    call returns the first lot and adds nothing."""
    granted_at = granted_at or now
    expires_at = expires_at or granted_at + settings.CREDIT_LOT_LIFETIME
    lot = CreditLot(account=account, source=source, amount_nanos=amount_nanos,
                    remaining_nanos=amount_nanos, granted_at=granted_at, expires_at=expires_at,
                    reason=reason[:255], grant_key=grant_key)
    if grant_key is None:
        lot.save(force_insert=True)
    else:
        try:
            with transaction.atomic():
                lot.save(force_insert=True)
        except IntegrityError:
            return CreditLot.objects.get(account=account, grant_key=grant_key), False
    ledger_post(kind=kind, account_id=account.id, now=now, memo=memo,
                legs=[Leg(Book.CUSTOMER_CREDIT, amount_nanos, account.id, lot.id), *funded_by])
    account_balance_apply(account=account, balance_delta=amount_nanos)
    _receivable_recover(account=account, now=now)
    return lot, True


@transaction.atomic
def credit_grant(*, account_id: UUID, amount_nanos: int, reason: str,
                 source: str = Source.STAFF_GRANT, expires_at: datetime | None = None,
                 granted_at: datetime | None = None, grant_key: str | None = None,
                 now: datetime | None = None) -> tuple[CreditLot, bool]:
    """Grant credit that was not paid for (free, plan or staff credit). It is spendable
    like any credit but never counts toward the unlock tier."""
    now = now or timezone.now()
    if expires_at is not None and expires_at <= now:
        raise InvalidExpiry()
    account = account_lock(account_id=account_id)
    return _lot_add(
        account=account, source=source, amount_nanos=amount_nanos, kind=Kind.GRANT,
        funded_by=[Leg(Book.PROMOTIONAL, -amount_nanos)], memo=reason or source, now=now,
        granted_at=granted_at, expires_at=expires_at, reason=reason, grant_key=grant_key,
    )


@transaction.atomic
def purchase_record(*, account_id: UUID, amount_nanos: int, reference: str, kind: str,
                    cash_book: str = Book.STRIPE_CASH, lot_source: str = Source.PURCHASE,
                    lot_amount_nanos: int | None = None,
                    now: datetime | None = None) -> tuple[Purchase, bool]:
    """Record paid credit, exactly once per (account, reference): a second call returns
    the first purchase and adds nothing. The purchase counts toward the tier at once.

    `lot_amount_nanos` lets a payment buy more credit than it costs (the pay-as-you-go
    plan's $3 month grants $5): the difference is a promotional grant."""
    now = now or timezone.now()
    account = account_lock(account_id=account_id)
    existing = Purchase.objects.filter(account=account, reference=reference).first()
    if existing is not None:
        return existing, False
    lot_amount = amount_nanos if lot_amount_nanos is None else lot_amount_nanos
    funded_by = [Leg(cash_book, -amount_nanos)]
    if lot_amount != amount_nanos:
        funded_by.append(Leg(Book.PROMOTIONAL, amount_nanos - lot_amount))
    lot, _ = _lot_add(account=account, source=lot_source, amount_nanos=lot_amount,
                      funded_by=funded_by, kind=Kind.PURCHASE, memo=f"Purchase {reference}",
                      now=now)
    # Under the account lock the check above cannot race; the unique constraint on
    # (account, reference) is the guarantee all the same.
    purchase = Purchase.objects.create(account=account, kind=kind, amount_nanos=amount_nanos,
                                       reference=reference, lot=lot, purchased_at=now)
    account_tier_refresh(account=account, now=now)
    purchase_receipt_email_enqueue(purchase_id=purchase.id)
    return purchase, True


def credit_lots_expire(*, account: Account, now: datetime) -> int:
    """Record the expiry of the locked account's lots that are past their time. Returns
    the credit expired."""
    due = list(
        CreditLot.objects.filter(account=account, remaining_nanos__gt=0, expires_at__lte=now)
        .order_by("expires_at", "id")
        .values_list("id", "remaining_nanos")
    )
    if not due:
        return 0
    total = sum(remaining for _, remaining in due)
    CreditLot.objects.filter(id__in=[lot_id for lot_id, _ in due]).update(
        remaining_nanos=0, expired_at=now)
    ledger_post(
        kind=Kind.EXPIRY, account_id=account.id, now=now, memo="Credit expired",
        legs=[*(Leg(Book.CUSTOMER_CREDIT, -remaining, account.id, lot_id)
                for lot_id, remaining in due),
              Leg(Book.EXPIRED_CREDIT, total)],
    )
    balance_before = account.balance_nanos
    account_balance_apply(account=account, balance_delta=-total)
    low_balance_record(account=account, balance_before_nanos=balance_before, now=now)
    return total


@transaction.atomic
def credit_lots_expire_due(*, account_id: UUID, now: datetime | None = None) -> int:
    now = now or timezone.now()
    account = account_lock(account_id=account_id)
    return credit_lots_expire(account=account, now=now)


def free_grant_cycle(*, account: Account, plan: Plan, now: datetime):
    """The free-grant cycle `now` falls in: cycles start at account creation and last the
    plan's interval. Returns (key, start, end) or None when the plan has no free grant."""
    if not plan.free_grant_interval_days or plan.credit_grant_nanos <= 0:
        return None
    interval = timedelta(days=plan.free_grant_interval_days)
    cycle = max(0, (now - account.created_at) // interval)
    start = account.created_at + cycle * interval
    return f"free:{start.isoformat()}", start, start + interval


def free_grant_ensure_locked(*, account: Account, now: datetime) -> CreditLot | None:
    plan = Plan.objects.get(code=account.plan_id)
    cycle = free_grant_cycle(account=account, plan=plan, now=now)
    if cycle is None:
        return None
    key, start, end = cycle
    lot, _ = _lot_add(
        account=account, source=Source.FREE_GRANT, amount_nanos=plan.credit_grant_nanos,
        funded_by=[Leg(Book.PROMOTIONAL, -plan.credit_grant_nanos)], kind=Kind.GRANT,
        memo=f"{plan.name} plan free credit", now=now, granted_at=start, expires_at=end,
        grant_key=key,
    )
    return lot


@transaction.atomic
def free_grant_ensure(*, account_id: UUID, now: datetime | None = None) -> CreditLot | None:
    """Give the account its free grant for the current cycle unless it has it. Safe to run
    twice, and concurrently: the lot's grant key is unique per account."""
    now = now or timezone.now()
    account = account_lock(account_id=account_id)
    credit_lots_expire(account=account, now=now)  # the old grant goes as the new one comes
    return free_grant_ensure_locked(account=account, now=now)


def free_grant_due_account_ids(*, now: datetime) -> list[UUID]:
    """Accounts on a plan with a free grant that hold no free grant live at `now`."""
    live_free = CreditLot.objects.filter(source=Source.FREE_GRANT, granted_at__lte=now,
                                         expires_at__gt=now)
    return list(
        Account.objects.filter(plan__free_grant_interval_days__isnull=False,
                               plan__credit_grant_nanos__gt=0)
        .exclude(id__in=live_free.values("account_id"))
        .values_list("id", flat=True)
    )


def credit_expiry_due_account_ids(*, now: datetime) -> list[UUID]:
    return list(Account.objects.filter(credit_valid_until__lte=now).values_list("id", flat=True))



@transaction.atomic
def credit_debit(*, account_id: UUID, amount_nanos: int, reason: str,
                 now: datetime | None = None) -> int:
    """Staff adjustment that removes credit, soonest-expiring first. Refused, with nothing
    written, when the live credit not reserved by open holds cannot cover it."""
    now = now or timezone.now()
    if amount_nanos <= 0:
        raise ApplicationError("A debit must be a positive amount.")
    account = account_lock(account_id=account_id)
    credit_lots_expire(account=account, now=now)
    if account.balance_nanos - account.held_nanos < amount_nanos:
        raise InsufficientCredit("The account's available credit cannot cover this debit.")
    consumed = credit_consume(account=account, amount_nanos=amount_nanos, now=now)
    ledger_post(kind=Kind.ADJUSTMENT, account_id=account.id, now=now, memo=reason,
                legs=[*consumed.legs, Leg(Book.STAFF_ADJUSTMENT, consumed.covered_nanos)])
    balance_before = account.balance_nanos
    account_balance_apply(account=account, balance_delta=-consumed.covered_nanos)
    low_balance_record(account=account, balance_before_nanos=balance_before, now=now)
    return consumed.covered_nanos


def account_tier_refresh(*, account: Account, now: datetime) -> None:
    """Recompute the locked account's tier (ratelimits/tiers.py) from its purchases in the
    window, refunds deducted."""
    purchases = Purchase.objects.filter(
        account=account, purchased_at__gt=tier_window_start(now),
        refunded_nanos__lt=F("amount_nanos"),
    ).values_list("amount_nanos", "refunded_nanos", "purchased_at")
    account_tier_apply(
        account=account, now=now,
        purchases=((amount - refunded, purchased_at)
                   for amount, refunded, purchased_at in purchases))
