from datetime import datetime
from decimal import Decimal

from django.db.models import Count, Sum
from django.utils import timezone

from accounts.models import Account
from accounts.services import account_get
from billing.selectors import ledger_discrepancies
from metering.holds import account_bring_current
from metering.models import Hold, InferenceModel, PricingPolicy, SizeClass


def size_class_for(*, params_b: Decimal) -> SizeClass | None:
    """The smallest size class whose size is at least the model's."""
    return SizeClass.objects.filter(max_params_b__gte=params_b).order_by("max_params_b").first()


def model_get(*, model_id: str) -> InferenceModel | None:
    return InferenceModel.objects.filter(id=model_id).first()


def pricing_policy_get() -> PricingPolicy:
    policy, _ = PricingPolicy.objects.get_or_create(id=1)
    return policy


def account_current(*, account_id, now: datetime | None = None) -> Account:
    """The account with its working state brought up to `now` (expired credit recorded,
    tier recomputed, lapsed holds expired) when something is stale; no lock otherwise."""
    now = now or timezone.now()
    account = account_get(account_id=account_id)
    if (account.credit_valid_until <= now or account.tier_valid_until <= now
            or Hold.objects.filter(account=account, status=Hold.Status.OPEN,
                                   lease_expires_at__lte=now).exists()):
        account_bring_current(account_id=account.id, now=now)
        account = account_get(account_id=account.id)
    return account


def hold_discrepancies():
    """The run path's working counters against its open holds, per account."""
    open_holds = {
        row["account_id"]: row
        for row in Hold.objects.filter(status=Hold.Status.OPEN).values("account_id")
        .annotate(held=Sum("reserved_nanos"), slots=Sum("weight"), n=Count("id"))
    }
    for account_id, held, slots in Account.objects.values_list("id", "held_nanos",
                                                               "slots_in_use"):
        row = open_holds.get(account_id, {"held": 0, "slots": 0})
        if held != row["held"] or slots != row["slots"]:
            yield (f"account {account_id}: working held {held} / slots {slots}, open holds "
                   f"{row['held']} / {row['slots']}")


def books_discrepancies() -> list[str]:
    """Everything `ledger_check` verifies: the ledger, lots and balances (billing's), and
    the run path's held money and slots against its open holds. Empty: the books agree."""
    return [*ledger_discrepancies(), *hold_discrepancies()]
