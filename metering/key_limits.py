"""Setting and reading an API key's spend limit (the rule: ratelimits/key_limits.py).

Setting a limit takes the key's account row lock, which every writer of the key's spend
counter holds (authorize's statement, settle, release, lease expiry), and recounts the
current period from the key's holds: a limit set or moved to another period mid-period
counts the runs already authorized in it. Its effect starts with the next authorize."""

from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

from django.db import transaction
from django.db.models import Case, F, Q, Sum, When
from django.utils import timezone

from accounts.locks import account_lock
from accounts.models import ApiKey
from accounts.services import ApiKeyNotFound
from config.api import ApplicationError
from metering.catalog import catalog_caches_clear
from metering.models import Hold
from ratelimits.key_limits import TOTAL_PERIOD_START, period_end, period_start
from ratelimits.models import KeySpend

# What a hold counts against its key's limit: its reservation while open, its charge once
# settled, nothing once released or expired.
HOLD_SPEND = Case(When(status=Hold.Status.OPEN, then=F("reserved_nanos")),
                  When(status=Hold.Status.SETTLED, then=F("charged_nanos")), default=0)

_UNSET = object()


class SpendLimitInvalid(ApplicationError):
    code = "invalid_request"


@dataclass(frozen=True, slots=True)
class KeySpendSummary:
    id: UUID
    name: str
    prefix: str
    kind: str
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None
    spend_limit_nanos: int | None
    spend_limit_period: str | None
    spent_nanos: int
    period_resets_at: datetime | None


def _api_key_get(*, account_id: UUID, key_id) -> ApiKey:
    try:
        key_uuid = key_id if isinstance(key_id, UUID) else UUID(str(key_id))
    except ValueError:
        raise ApiKeyNotFound() from None
    api_key = ApiKey.objects.filter(id=key_uuid, account_id=account_id).first()
    if api_key is None:
        raise ApiKeyNotFound()
    return api_key


def key_spend_summary(*, account_id: UUID, key_id, now: datetime | None = None
                      ) -> KeySpendSummary:
    """The key as the internal API's GET shows it: its limit, what it spent in the
    current period (charges plus open reservations of runs authorized in it) and when
    the period resets. A key without a limit: its spend over all time."""
    now = now or timezone.now()
    api_key = _api_key_get(account_id=account_id, key_id=key_id)
    period = api_key.spend_limit_period or None
    if api_key.spend_limit_nanos is None:
        spent = Hold.objects.filter(account_id=account_id, api_key_id=api_key.id).aggregate(
            spent=Sum(HOLD_SPEND, default=0))["spent"]
        resets_at = None
    else:
        spent = KeySpend.objects.filter(
            api_key_id=api_key.id, period_start=period_start(period=period, now=now)
        ).values_list("spent_nanos", flat=True).first() or 0
        resets_at = period_end(period=period, now=now)
    return KeySpendSummary(
        id=api_key.id, name=api_key.name, prefix=api_key.prefix, kind=api_key.kind,
        created_at=api_key.created_at, last_used_at=api_key.last_used_at,
        revoked_at=api_key.revoked_at, spend_limit_nanos=api_key.spend_limit_nanos,
        spend_limit_period=period, spent_nanos=spent, period_resets_at=resets_at)


def _key_spend_recount_locked(*, api_key: ApiKey, starts: set[datetime]) -> None:
    """Make each of these periods' counters the sum of what their holds count."""
    for start in sorted(starts):
        spent = Hold.objects.filter(account_id=api_key.account_id, api_key_id=api_key.id,
                                    spend_period_start=start).aggregate(
            spent=Sum(HOLD_SPEND, default=0))["spent"]
        KeySpend.objects.update_or_create(api_key_id=api_key.id, period_start=start,
                                          defaults={"spent_nanos": spent})


@transaction.atomic
def api_key_spend_limit_set(*, account_id: UUID, key_id, limit_nanos=_UNSET,
                            period: str | None = None,
                            now: datetime | None = None) -> ApiKey:
    """Set, change or remove (limit_nanos=None) a key's spend limit and its period
    (day, week, month, total; a new limit without one: month). Either may be left out."""
    now = now or timezone.now()
    account_lock(account_id=account_id)
    api_key = _api_key_get(account_id=account_id, key_id=key_id)
    new_limit = api_key.spend_limit_nanos if limit_nanos is _UNSET else limit_nanos
    if new_limit is not None and new_limit < 0:
        raise SpendLimitInvalid(extra={"fields": {"spend_limit_usd": [
            "Must not be negative."]}})
    if new_limit is None:
        if period is not None:
            raise SpendLimitInvalid(
                "A period needs a limit.", extra={"fields": {"spend_limit_period": [
                    "The key has no spend limit; send spend_limit_usd too."]}})
        new_period = ""
    else:
        new_period = period or api_key.spend_limit_period or ApiKey.SpendPeriod.MONTH
        if new_period not in ApiKey.SpendPeriod.values:
            raise SpendLimitInvalid(extra={"fields": {"spend_limit_period": [
                "One of day, week, month, total."]}})
    ApiKey.objects.filter(id=api_key.id).update(spend_limit_nanos=new_limit,
                                                spend_limit_period=new_period)
    if new_limit is not None:
        start = period_start(period=new_period, now=now)
        # Runs authorized in the current period count in it, whatever they counted in.
        since = start if start != TOTAL_PERIOD_START else None
        moving = Hold.objects.filter(account_id=account_id, api_key_id=api_key.id)
        if since is not None:
            moving = moving.filter(created_at__gte=since)
        moving = moving.filter(~Q(spend_period_start=start) | Q(spend_period_start=None))
        starts = {start} | {s for s in moving.values_list("spend_period_start", flat=True)
                            .distinct() if s is not None}
        moving.update(spend_period_start=start)
        _key_spend_recount_locked(api_key=api_key, starts=starts)
    api_key.refresh_from_db()
    # This process reads the key's limit again at once; others at their next authorize
    # of it (the statement checks the limit it was given is still the key's).
    catalog_caches_clear()
    transaction.on_commit(catalog_caches_clear)
    return api_key
