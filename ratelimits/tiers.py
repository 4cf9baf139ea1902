"""Unlock tiers: the one place that answers every tier question.

Credits *purchased* in the rolling window (settings.TIER_WINDOW, 4 weeks by default;
grants and refunded amounts never count) reach a tier; the tier sets the largest open
model an account may run and its concurrent-run slots. The account row caches its tier
(`tier_*` columns) until the oldest purchase in the window ages out: the run path's fast
path reads those columns (metering/sql.py, RESERVE_SQL, is this rule in SQL), and the
slow path refreshes them when `tier_valid_until` has passed.

Purchases are billing's: billing sums them over the window this module names and hands
them to account_tier_apply()."""

from collections.abc import Iterable
from datetime import datetime, timedelta
from decimal import Decimal

from django.conf import settings

from accounts.models import FAR_FUTURE, Account
from config.money import nanos_to_usd
from ratelimits.errors import ModelSizeLocked
from ratelimits.models import Tier


def tier_window_start(now: datetime) -> datetime:
    """Purchases after this time count toward the tier at `now`."""
    return now - settings.TIER_WINDOW


def tier_window_text() -> str:
    """The window as a person says it: "4 weeks", "10 days"."""
    window: timedelta = settings.TIER_WINDOW
    days = window.days
    if window == timedelta(days=days) and days % 7 == 0:
        weeks = days // 7
        return f"{weeks} week{'s' if weeks != 1 else ''}"
    if window == timedelta(days=days):
        return f"{days} day{'s' if days != 1 else ''}"
    return f"{window.total_seconds():g} seconds"


def tier_for_purchased(*, purchased_nanos: int) -> Tier | None:
    return (Tier.objects.filter(min_purchased_nanos__lte=purchased_nanos)
            .order_by("-min_purchased_nanos").first())


def tier_unlocking(*, params_b: Decimal) -> Tier | None:
    """The cheapest tier that unlocks a model of this size class, if any does."""
    return (Tier.objects.filter(max_params_b__gte=params_b)
            .order_by("min_purchased_nanos").first())


def tier_next_with_more_slots(*, account: Account) -> Tier | None:
    """The next tier above what the account purchased that adds concurrency slots."""
    return (Tier.objects.filter(min_purchased_nanos__gt=account.purchased_window_nanos,
                                concurrency__gt=account.tier_concurrency)
            .order_by("min_purchased_nanos").first())


def account_tier_apply(*, account: Account, purchases: Iterable[tuple[int, datetime]],
                       now: datetime) -> None:
    """Set the locked account's tier from its purchases in the window, given as (amount
    net of refunds, purchased at); valid until the oldest of them ages out."""
    purchased = 0
    oldest = None
    for amount, purchased_at in purchases:
        purchased += amount
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


def model_size_refusal(*, account: Account, size_class: str | None,
                       class_params_b: Decimal) -> ModelSizeLocked | None:
    """Why the account's tier cannot run a model of this size class (None: it can)."""
    if class_params_b <= account.tier_max_params_b:
        return None
    tier = tier_unlocking(params_b=class_params_b)
    extra = {"model_size_class": size_class,
             "tier": account.tier.name if account.tier_id else None}
    if tier is None:
        return ModelSizeLocked("No tier unlocks this model size.", extra=extra)
    extra["required_purchase_usd"] = nanos_to_usd(tier.min_purchased_nanos)
    extra["purchased_last_4_weeks_usd"] = nanos_to_usd(account.purchased_window_nanos)
    return ModelSizeLocked(
        f"The {size_class} size class needs credits purchased in the last "
        f"{tier_window_text()} of at least ${nanos_to_usd(tier.min_purchased_nanos)}.",
        extra=extra)
