from datetime import datetime

from django.conf import settings
from django.db.models import F

from accounts.models import FAR_FUTURE, Account
from billing.models import Purchase
from ratelimits.models import Tier


def tier_for_purchased(*, purchased_nanos: int) -> Tier | None:
    return (Tier.objects.filter(min_purchased_nanos__lte=purchased_nanos)
            .order_by("-min_purchased_nanos").first())


def account_tier_refresh(*, account: Account, now: datetime) -> None:
    """Recompute the locked account's tier from its purchases in the rolling window
    (refunds deducted), valid until the oldest of them ages out."""
    window_start = now - settings.TIER_WINDOW
    purchased = 0
    oldest = None
    for amount, refunded, purchased_at in Purchase.objects.filter(
        account=account, purchased_at__gt=window_start, refunded_nanos__lt=F("amount_nanos"),
    ).values_list("amount_nanos", "refunded_nanos", "purchased_at"):
        purchased += amount - refunded
        oldest = purchased_at if oldest is None else min(oldest, purchased_at)
    tier = tier_for_purchased(purchased_nanos=purchased)
    fields = {
        "tier": tier,
        "tier_max_params_b": tier.max_params_b if tier else 0,
        "tier_concurrency": tier.concurrency if tier else 0,
        "purchased_window_nanos": purchased,
        "tier_valid_until": oldest + settings.TIER_WINDOW if oldest else FAR_FUTURE,
    }
    Account.objects.filter(id=account.id).update(**fields)
    for name, value in fields.items():
        setattr(account, name, value)


def tiers_changed(*, now: datetime) -> None:
    """Staff edited the tier table: every account's cached tier is recomputed lazily, on
    its next authorize or read."""
    Account.objects.update(tier_valid_until=now)
