"""The low-balance crossing: a change that takes the balance from at or above the
auto-reload threshold to below it records one LowBalanceEvent, in the same transaction,
and hands it to auto-reload (billing/auto_reload.py) once that commits. On PostgreSQL the
settle writes the same record in SQL (metering/settle_sql.py, the low_balance step)."""

import logging
from datetime import datetime
from functools import partial

from django.db import transaction

from accounts.locks import account_lock
from accounts.models import Account
from billing.models import BillingProfile, LowBalanceEvent
from billing.notifications import auto_reload_failed_notify, low_balance_email_enqueue

logger = logging.getLogger(__name__)


def balance_crossed_threshold(*, threshold_nanos: int | None, balance_before_nanos: int,
                              balance_after_nanos: int) -> bool:
    return threshold_nanos is not None and (
        balance_before_nanos >= threshold_nanos > balance_after_nanos)


def low_balance_record(*, account: Account, balance_before_nanos: int,
                       now: datetime) -> LowBalanceEvent | None:
    """Record a crossing below the auto-reload threshold, if this change made one. Call in
    the transaction that lowered the locked account's balance, after applying it."""
    threshold = account.auto_reload_threshold_nanos
    if not balance_crossed_threshold(threshold_nanos=threshold,
                                     balance_before_nanos=balance_before_nanos,
                                     balance_after_nanos=account.balance_nanos):
        return None
    return low_balance_event_open(account=account, threshold_nanos=threshold,
                                  balance_before_nanos=balance_before_nanos, now=now)


def low_balance_event_open(*, account: Account, threshold_nanos: int,
                           balance_before_nanos: int, now: datetime) -> LowBalanceEvent:
    """Write the crossing and, once its transaction commits, hand it to auto-reload. A
    broker that cannot take the task does not fail the caller: the periodic sweep picks
    up crossings nobody handled."""
    event = LowBalanceEvent.objects.create(
        account=account, threshold_nanos=threshold_nanos,
        balance_before_nanos=balance_before_nanos, balance_after_nanos=account.balance_nanos,
        created_at=now)
    transaction.on_commit(partial(low_balance_event_dispatch, event_id=event.id), robust=True)
    return event


def low_balance_event_dispatch(*, event_id: int) -> None:
    """Hand a committed crossing to auto-reload and to its email. A broker that cannot
    take the task does not fail the caller: the periodic sweep picks up crossings nobody
    handled (for auto-reload, and for the email: billing.tasks.money_emails_unsent_send)."""
    # Tasks are entry points above the services: imported at call time, not at load.
    from billing.tasks import auto_reload_for_crossing  # noqa: PLC0415

    try:
        auto_reload_for_crossing.delay(event_id)
    except Exception:
        logger.exception("could not enqueue auto-reload for low-balance event %s", event_id)
    low_balance_email_enqueue(low_balance_event_id=event_id)


# --- Auto-reload's trigger: the threshold column the crossing is measured against ---------


def auto_reload_threshold_sync_locked(*, profile: BillingProfile) -> Account:
    """Keep the run path's trigger column equal to the threshold while auto-reload is on
    and not paused, NULL otherwise. Call with the profile locked."""
    wanted = profile.auto_reload_threshold_nanos if profile.auto_reload_active else None
    account = account_lock(account_id=profile.account_id)
    if account.auto_reload_threshold_nanos != wanted:
        Account.objects.filter(id=account.id).update(auto_reload_threshold_nanos=wanted)
        account.auto_reload_threshold_nanos = wanted
    return account


def auto_reload_pause_locked(*, profile: BillingProfile, reason: str, now: datetime) -> None:
    if not profile.auto_reload_enabled or profile.auto_reload_paused_at is not None:
        return
    profile.auto_reload_paused_at = now
    profile.auto_reload_paused_reason = reason[:255]
    BillingProfile.objects.filter(account_id=profile.account_id).update(
        auto_reload_paused_at=now, auto_reload_paused_reason=reason[:255], updated_at=now)
    auto_reload_threshold_sync_locked(profile=profile)
    account_id = profile.account_id

    def notify():
        auto_reload_failed_notify(account_id=account_id, reason=reason)

    transaction.on_commit(notify, robust=True)
