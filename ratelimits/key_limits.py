"""Spend limits on API keys: the rule's one Python statement.

A key may carry a limit per UTC day, ISO week (from Monday 00:00 UTC), UTC month or in
total. What counts against it: the reservations of the key's open holds and the charges
of its settled ones, each in the period in which the run was authorized (the counter,
ratelimits.models.KeySpend, one row per key and period start). A run is refused when the
key's spend plus its reservation would exceed the limit; a settle above the reservation
is charged in full, so a key may end above its limit by that run's overrun.

The fast path says the same in SQL (metering/sql.py, AUTHORIZE_LIMITED_PG, which names
this module); the settle's twin is metering/settle_sql.py's key-spend step."""

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from uuid import UUID

from django.db.models import F

from accounts.models import ApiKey
from config.api import ApplicationError
from config.money import nanos_to_usd
from ratelimits.models import KeySpend

# The one "period" of a limit in total: it never resets.
TOTAL_PERIOD_START = datetime(1970, 1, 1, tzinfo=UTC)
PERIODS = tuple(ApiKey.SpendPeriod.values)


class KeySpendLimitReached(ApplicationError):
    status = 402
    code = "key_spend_limit"
    message = "This API key has reached its spend limit."


def period_start(*, period: str, now: datetime) -> datetime:
    """The UTC start of the period that contains `now`."""
    now = now.astimezone(UTC)
    day = now.replace(hour=0, minute=0, second=0, microsecond=0)
    if period == ApiKey.SpendPeriod.DAY:
        return day
    if period == ApiKey.SpendPeriod.WEEK:
        return day - timedelta(days=day.weekday())  # ISO weeks start on Monday
    if period == ApiKey.SpendPeriod.MONTH:
        return day.replace(day=1)
    if period == ApiKey.SpendPeriod.TOTAL:
        return TOTAL_PERIOD_START
    raise ValueError(f"unknown spend period {period!r}")


def period_end(*, period: str, now: datetime) -> datetime | None:
    """When the period that contains `now` ends (None: a limit in total never resets)."""
    start = period_start(period=period, now=now)
    if period == ApiKey.SpendPeriod.DAY:
        return start + timedelta(days=1)
    if period == ApiKey.SpendPeriod.WEEK:
        return start + timedelta(days=7)
    if period == ApiKey.SpendPeriod.MONTH:
        return (start.replace(year=start.year + 1, month=1) if start.month == 12
                else start.replace(month=start.month + 1))
    return None


def key_spent_nanos(*, key_id: UUID, period_start_at: datetime) -> int:
    return KeySpend.objects.filter(api_key_id=key_id, period_start=period_start_at) \
        .values_list("spent_nanos", flat=True).first() or 0


@dataclass(frozen=True, slots=True)
class KeyLimit:
    limit_nanos: int
    period: str


def key_limit_refusal(*, limit: KeyLimit | None, spent_nanos: int, reserve_nanos: int,
                      now: datetime) -> KeySpendLimitReached | None:
    """Why this reservation would take the key over its limit (None: it would not)."""
    if limit is None or spent_nanos + reserve_nanos <= limit.limit_nanos:
        return None
    resets_at = period_end(period=limit.period, now=now)
    return KeySpendLimitReached(extra={
        "limit_usd": nanos_to_usd(limit.limit_nanos),
        "spent_usd": nanos_to_usd(spent_nanos),
        "resets_at": resets_at.isoformat().replace("+00:00", "Z") if resets_at else None,
    })


def key_spend_move(*, key_id: UUID, period_start_at: datetime | None, delta_nanos: int) -> None:
    """Add `delta_nanos` (negative: give back) to the key's spend in the period a run was
    authorized in; a run authorized while the key had no limit (no period) counts
    nowhere. Callers hold the key's account row lock. (The settle on PostgreSQL does the
    same inside metering_settle, metering/settle_sql.py.)"""
    if period_start_at is None or not delta_nanos:
        return
    KeySpend.objects.filter(api_key_id=key_id, period_start=period_start_at).update(
        spent_nanos=F("spent_nanos") + delta_nanos)
