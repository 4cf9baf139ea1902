"""Reads for the dashboard's pages. Money stays in integer nano-dollars here; templates
turn it into dollars with the `usd` filter."""

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal
from fractions import Fraction

from django.conf import settings
from django.db.models import BooleanField, Count, ExpressionWrapper, F, Max, QuerySet, Sum
from django.db.models.functions import TruncDate

from accounts.models import FAR_FUTURE, Account, ApiKey
from billing.models import CreditLot, Plan, Purchase
from billing.selectors import account_subscription, auto_reload_summary, utc_month_bounds
from config.money import cents_to_nanos, round_half_up
from metering.models import InferenceModel, SizeClass, UsageRecord
from metering.selectors import pricing_policy_get
from ratelimits.models import Tier
from ratelimits.tiers import tier_window_start

EXPIRY_WARNING_WINDOW = timedelta(days=7)
SPEND_CHART_DAYS = 30


# --- Tiers ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class TierStep:
    tier: Tier
    purchase_needed_nanos: int  # more credit to buy in the window to reach it


@dataclass(frozen=True)
class TierDrop:
    at: datetime
    purchase_amount_nanos: int
    purchased_at: datetime
    tier_after: Tier | None


@dataclass(frozen=True)
class TierStatus:
    tier: Tier | None
    purchased_window_nanos: int
    next: TierStep | None
    drop: TierDrop | None
    tiers: list[Tier]


def _tier_for(tiers: list[Tier], purchased_nanos: int) -> Tier | None:
    reached = [t for t in tiers if t.min_purchased_nanos <= purchased_nanos]
    return reached[-1] if reached else None


def purchase_minimum_nanos() -> int:
    return cents_to_nanos(settings.PURCHASE_MIN_CENTS)


def tier_status(*, account: Account, now: datetime) -> TierStatus:
    """The account's tier, what purchase reaches the next one, and when (and to what) the
    current one drops as the oldest purchase in the window ages out. Two queries."""
    tiers = list(Tier.objects.order_by("min_purchased_nanos"))
    purchased = account.purchased_window_nanos
    upper = [t for t in tiers if t.min_purchased_nanos > purchased]
    next_step = None
    if upper:
        next_step = TierStep(tier=upper[0],
                             purchase_needed_nanos=upper[0].min_purchased_nanos - purchased)
    drop = None
    if account.tier_valid_until < FAR_FUTURE:
        window_start = tier_window_start(now)
        in_window = list(
            Purchase.objects.filter(account_id=account.id, purchased_at__gt=window_start,
                                    refunded_nanos__lt=F("amount_nanos"))
            .order_by("purchased_at", "id")
            .values_list("amount_nanos", "refunded_nanos", "purchased_at"))
        if in_window:
            purchased_at = in_window[0][2]
            # Every purchase made in the same instant ages out with it.
            leaving = sum(a - r for a, r, at in in_window if at == purchased_at)
            drop = TierDrop(at=purchased_at + settings.TIER_WINDOW,
                            purchase_amount_nanos=leaving, purchased_at=purchased_at,
                            tier_after=_tier_for(tiers, max(0, purchased - leaving)))
    return TierStatus(tier=account.tier, purchased_window_nanos=purchased, next=next_step,
                      drop=drop, tiers=tiers)


# --- Overview -------------------------------------------------------------------------------


@dataclass(frozen=True)
class SpendDay:
    day: date
    open_nanos: int
    closed_nanos: int

    @property
    def total_nanos(self) -> int:
        return self.open_nanos + self.closed_nanos


def daily_spend(*, account_id, now: datetime, days: int = SPEND_CHART_DAYS) -> list[SpendDay]:
    """What settled runs charged each UTC day of the last `days` days (today included),
    open and closed models apart; days without usage are zero. One query."""
    today = now.date()
    first = today - timedelta(days=days - 1)
    start = datetime.combine(first, datetime.min.time(), tzinfo=now.tzinfo)
    by_day: dict[date, dict[str, int]] = {}
    for row in (UsageRecord.objects.filter(account_id=account_id, created_at__gte=start)
                .annotate(day=TruncDate("created_at")).values("day", "kind")
                .annotate(total=Sum("charged_nanos")).order_by()):
        by_day.setdefault(row["day"], {})[row["kind"]] = row["total"] or 0
    return [SpendDay(day=d, open_nanos=by_day.get(d, {}).get("open", 0),
                     closed_nanos=by_day.get(d, {}).get("closed", 0))
            for d in (first + timedelta(days=i) for i in range(days))]


def expiring_lots(*, account_id, now: datetime,
                  within: timedelta = EXPIRY_WARNING_WINDOW) -> list[CreditLot]:
    """Lots with credit left that expire within `within`, soonest first."""
    return list(CreditLot.objects.filter(account_id=account_id, remaining_nanos__gt=0,
                                         expires_at__gt=now, expires_at__lte=now + within)
                .order_by("expires_at", "id"))


@dataclass
class Overview:
    account: Account
    plan: Plan
    subscription: object
    tier: TierStatus
    expiring: list[CreditLot]
    spend_days: list[SpendDay]
    auto_reload: dict
    spend_30d_nanos: int = 0
    expiring_total_nanos: int = 0
    extra: dict = field(default_factory=dict)


def overview_get(*, account: Account, now: datetime) -> Overview:
    """Everything the overview shows, in a fixed number of queries."""
    spend_days = daily_spend(account_id=account.id, now=now)
    expiring = expiring_lots(account_id=account.id, now=now)
    return Overview(
        account=account,
        plan=account.plan,
        subscription=account_subscription(account_id=account.id),
        tier=tier_status(account=account, now=now),
        expiring=expiring,
        spend_days=spend_days,
        auto_reload=auto_reload_summary(account_id=account.id, now=now),
        spend_30d_nanos=sum(d.total_nanos for d in spend_days),
        expiring_total_nanos=sum(lot.remaining_nanos for lot in expiring),
    )


# --- API keys -------------------------------------------------------------------------------


def api_keys_with_month_spend(*, account_id, now: datetime) -> list[ApiKey]:
    """The account's keys, newest first, each with `.usable` and `.month_spend_nanos`
    (this UTC month's settled charges). Two queries."""
    start, end = utc_month_bounds(now)
    spend = dict(UsageRecord.objects.filter(account_id=account_id, created_at__gte=start,
                                            created_at__lt=end)
                 .values_list("api_key_id").annotate(total=Sum("charged_nanos"))
                 .values_list("api_key_id", "total").order_by())
    keys = list(ApiKey.objects.filter(account_id=account_id)
                .annotate(usable=ExpressionWrapper(ApiKey.usable_at(now),
                                                   output_field=BooleanField()))
                .order_by("-created_at", "id"))
    for key in keys:
        key.month_spend_nanos = spend.get(key.id, 0)
    return keys


def api_key_of_account(*, account_id, key_id) -> ApiKey | None:
    return ApiKey.objects.filter(account_id=account_id, id=key_id).first()


# --- Usage ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class UsageFilter:
    start: date
    end: date  # inclusive
    model_id: str = ""
    api_key_id: object = None
    kind: str = ""
    group: str = "day"  # "day": one row per day and model; "model": one per model


def usage_records(*, account_id, filters: UsageFilter, tz) -> QuerySet:
    start = datetime.combine(filters.start, datetime.min.time(), tzinfo=tz)
    end = datetime.combine(filters.end + timedelta(days=1), datetime.min.time(), tzinfo=tz)
    records = UsageRecord.objects.filter(account_id=account_id, created_at__gte=start,
                                         created_at__lt=end)
    if filters.model_id:
        records = records.filter(model_id=filters.model_id)
    if filters.api_key_id:
        records = records.filter(api_key_id=filters.api_key_id)
    if filters.kind:
        records = records.filter(kind=filters.kind)
    return records


_USAGE_SUMS = {
    "runs": Count("id"),
    "billed_seconds": Sum("billed_seconds"),
    "input_tokens": Sum("input_tokens"),
    "output_tokens": Sum("output_tokens"),
    "charged_nanos": Sum("charged_nanos"),
}


def usage_rows(*, account_id, filters: UsageFilter, tz) -> QuerySet:
    """Usage grouped by day and model (newest day first) or by model (largest spend
    first): the rows of the usage page and of its CSV."""
    records = usage_records(account_id=account_id, filters=filters, tz=tz)
    if filters.group == "model":
        return (records.values("model_id", "kind").annotate(**_USAGE_SUMS)
                .order_by("-charged_nanos", "model_id"))
    return (records.annotate(day=TruncDate("created_at")).values("day", "model_id", "kind")
            .annotate(**_USAGE_SUMS).order_by("-day", "model_id"))


def usage_totals(*, account_id, filters: UsageFilter, tz) -> dict:
    totals = usage_records(account_id=account_id, filters=filters, tz=tz).aggregate(
        **_USAGE_SUMS)
    return {k: v or 0 for k, v in totals.items()}


def usage_rows_iter(*, account_id, filters: UsageFilter, tz) -> Iterator[dict]:
    """The same rows, read in chunks through a server-side cursor: a year of usage never
    sits in memory."""
    return usage_rows(account_id=account_id, filters=filters, tz=tz).iterator(
        chunk_size=2000)


def usage_model_ids(*, account_id) -> list[str]:
    """Models for the usage filter: the catalog's, plus any this account used that the
    catalog has since dropped."""
    ids = set(InferenceModel.objects.values_list("id", flat=True))
    return sorted(ids)


def usage_last_day(*, account_id) -> datetime | None:
    return UsageRecord.objects.filter(account_id=account_id).aggregate(
        last=Max("created_at"))["last"]


# --- Models and prices ------------------------------------------------------------------------


@dataclass(frozen=True)
class CatalogEntry:
    model: InferenceModel
    size_class: SizeClass | None
    unlocked: bool
    unlocking_tier: Tier | None
    purchase_needed_nanos: int  # 0 when unlocked or no tier unlocks it
    input_nanos_per_mtok_with_fee: int | None = None
    output_nanos_per_mtok_with_fee: int | None = None

    @property
    def nanos_per_hour(self) -> int | None:
        return self.size_class.nanos_per_second * 3600 if self.size_class else None


def _with_fee(nanos: int | None, fee_ppm: int) -> int | None:
    if nanos is None:
        return None
    return round_half_up(Fraction(nanos) * (10**6 + fee_ppm) / 10**6)


def model_catalog(*, account: Account, tiers: list[Tier] | None = None) -> dict:
    """Every model with its price and whether the account's tier runs it. Four queries."""
    tiers = tiers if tiers is not None else list(Tier.objects.order_by("min_purchased_nanos"))
    classes = list(SizeClass.objects.order_by("max_params_b"))
    policy = pricing_policy_get()
    entries = []
    for model in InferenceModel.objects.order_by("kind", "params_b", "id"):
        if model.kind == InferenceModel.Kind.CLOSED:
            entries.append(CatalogEntry(
                model=model, size_class=None, unlocked=True, unlocking_tier=None,
                purchase_needed_nanos=0,
                input_nanos_per_mtok_with_fee=_with_fee(model.input_nanos_per_mtok,
                                                        policy.platform_fee_ppm),
                output_nanos_per_mtok_with_fee=_with_fee(model.output_nanos_per_mtok,
                                                         policy.platform_fee_ppm)))
            continue
        size_class = next((c for c in classes if c.max_params_b >= model.params_b), None)
        class_params = size_class.max_params_b if size_class else model.params_b
        unlocked = size_class is not None and class_params <= account.tier_max_params_b
        unlocking = next((t for t in tiers if t.max_params_b >= class_params), None)
        needed = 0
        if not unlocked and unlocking is not None:
            needed = max(0, unlocking.min_purchased_nanos - account.purchased_window_nanos)
        entries.append(CatalogEntry(model=model, size_class=size_class, unlocked=unlocked,
                                    unlocking_tier=unlocking, purchase_needed_nanos=needed))
    return {
        "open": [e for e in entries if e.model.kind == InferenceModel.Kind.OPEN],
        "closed": [e for e in entries if e.model.kind == InferenceModel.Kind.CLOSED],
        "size_classes": classes,
        "platform_fee_ppm": policy.platform_fee_ppm,
        "platform_fee_percent": Decimal(policy.platform_fee_ppm) / Decimal(10_000),
    }

