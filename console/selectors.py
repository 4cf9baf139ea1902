"""Reads for the console's account page and its search."""

import contextlib
import uuid
from dataclasses import dataclass

from django.db.models import Q, QuerySet

from accounts.models import Account, ApiKey
from billing.models import BillingProfile, CreditLot, LedgerTransaction, Purchase
from console.models import StaffAction
from metering.models import Hold, UsageRecord

RECENT = 25


def account_search(*, queryset: QuerySet[Account], term: str) -> QuerySet[Account]:
    """An account by its id, its owner's email (or part of it), one of its API keys'
    prefixes (e.g. "bk_AbC12xyz") or its Stripe customer id ("cus_...")."""
    term = term.strip()
    if not term:
        return queryset
    query = Q(user__email__icontains=term)
    with contextlib.suppress(ValueError):
        query |= Q(id=uuid.UUID(term))
    if term.startswith("cus_"):
        query |= Q(billing_profile__stripe_customer_id=term)
    if len(term) >= 4:
        # The key prefix as shown on the dashboard, or a full key pasted in.
        prefix = "_".join(term.split("_")[:2]) if term.startswith("bk_") else term
        query |= Q(api_keys__prefix__startswith=prefix)
    return queryset.filter(query).distinct()


@dataclass(frozen=True, slots=True)
class AccountOverview:
    account: Account
    profile: BillingProfile | None
    lots: list[CreditLot]
    open_holds: list[Hold]
    purchases: list[Purchase]
    keys: list[ApiKey]
    usage: list[UsageRecord]
    ledger: list[LedgerTransaction]
    staff_actions: list[StaffAction]

    @property
    def available_nanos(self) -> int:
        return self.account.balance_nanos - self.account.held_nanos

    @property
    def auto_reload_state(self) -> str:
        profile = self.profile
        if profile is None or not profile.auto_reload_enabled:
            return "off"
        return "paused" if profile.auto_reload_paused_at else "on"


def account_overview(*, account_id) -> AccountOverview:
    account = Account.objects.select_related("user", "tier", "plan").get(id=account_id)
    ledger = list(LedgerTransaction.objects.filter(account=account).order_by("-id")
                  .prefetch_related("entries")[:RECENT])
    for txn in ledger:
        txn.customer_delta_nanos = sum(e.amount_nanos for e in txn.entries.all()
                                       if e.book == "customer_credit")
    return AccountOverview(
        account=account,
        profile=BillingProfile.objects.filter(account=account).first(),
        lots=list(CreditLot.objects.filter(account=account).order_by("-expires_at")[:RECENT]),
        open_holds=list(Hold.objects.filter(account=account, status=Hold.Status.OPEN)
                        .order_by("created_at")),
        purchases=list(Purchase.objects.filter(account=account).order_by("-purchased_at")
                       [:RECENT]),
        keys=list(ApiKey.objects.filter(account=account).order_by("-created_at")),
        usage=list(UsageRecord.objects.filter(account=account).order_by("-created_at")
                   [:RECENT]),
        ledger=ledger,
        staff_actions=list(StaffAction.objects.filter(account=account)[:10]),
    )
