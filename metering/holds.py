"""Holds after authorize: release (the run did not happen), heartbeat (a long run keeps
its lease), and lease expiry (the caller vanished: its money and slots come back); and
bringing an account current, which the fast path assumes."""

from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

from django.conf import settings
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from accounts.locks import account_lock
from accounts.models import Account
from billing.credit import account_tier_refresh, credit_lots_expire
from config.lookups import get_or_raise
from metering.errors import HoldClosed, HoldNotFound
from metering.models import Hold


def hold_id_parse(hold_id) -> UUID:
    try:
        return hold_id if isinstance(hold_id, UUID) else UUID(str(hold_id))
    except ValueError:
        raise HoldNotFound() from None


def hold_get(hold_id) -> Hold:
    return get_or_raise(Hold.objects, HoldNotFound, id=hold_id)


def holds_expire_locked(*, account: Account, now: datetime) -> int:
    """Void the locked account's holds whose lease ran out: their money and slots are
    freed without a charge. Returns how many."""
    # Row locks: a heartbeat that commits first extends the lease and the hold is re-read
    # (not expired); one that comes after waits, then finds the hold expired (409).
    lapsed = list(Hold.objects.select_for_update()
                  .filter(account=account, status=Hold.Status.OPEN, lease_expires_at__lte=now)
                  .values_list("id", "reserved_nanos", "weight"))
    if not lapsed:
        return 0
    Hold.objects.filter(account=account, id__in=[hold_id for hold_id, _, _ in lapsed]).update(
        status=Hold.Status.EXPIRED, closed_at=now)
    held = sum(reserved for _, reserved, _ in lapsed)
    slots = sum(weight for _, _, weight in lapsed)
    Account.objects.filter(id=account.id).update(held_nanos=F("held_nanos") - held,
                                                 slots_in_use=F("slots_in_use") - slots)
    account.held_nanos -= held
    account.slots_in_use -= slots
    return len(lapsed)


@transaction.atomic
def holds_expire(*, account_id: UUID, now: datetime | None = None) -> int:
    now = now or timezone.now()
    return holds_expire_locked(account=account_lock(account_id=account_id), now=now)


def holds_expire_due_account_ids(*, now: datetime) -> list[UUID]:
    return list(Hold.objects.filter(status=Hold.Status.OPEN, lease_expires_at__lte=now)
                .values_list("account_id", flat=True).distinct())


def account_bring_current_locked(*, account: Account, now: datetime) -> None:
    """Everything the fast path assumes, made true for the locked account at `now`."""
    if account.credit_valid_until <= now:
        credit_lots_expire(account=account, now=now)
    if account.tier_valid_until <= now:
        account_tier_refresh(account=account, now=now)
    holds_expire_locked(account=account, now=now)


@transaction.atomic
def account_bring_current(*, account_id: UUID, now: datetime | None = None) -> Account:
    now = now or timezone.now()
    account = account_lock(account_id=account_id)
    account_bring_current_locked(account=account, now=now)
    return account


@dataclass(frozen=True, slots=True)
class HoldReleased:
    hold_id: UUID


@dataclass(frozen=True, slots=True)
class LeaseExtended:
    hold_id: UUID
    lease_expires_at: datetime


def hold_release(*, hold_id, now: datetime | None = None) -> HoldReleased:
    """The run did not happen: nothing is charged and the slot is freed. Idempotent."""
    now = now or timezone.now()
    hold_uuid = hold_id_parse(hold_id)
    account_id = Hold.objects.filter(id=hold_uuid).values_list("account_id", flat=True).first()
    if account_id is None:
        raise HoldNotFound()
    with transaction.atomic():
        account_lock(account_id=account_id)
        # Current: the account is locked. Keyed by the account too: shard-local (README).
        hold = Hold.objects.get(id=hold_uuid, account_id=account_id)
        if hold.status == Hold.Status.SETTLED:
            raise HoldClosed("The hold is settled; it cannot be released.",
                             extra={"hold_status": hold.status})
        if hold.status != Hold.Status.RELEASED:
            Hold.objects.filter(id=hold.id, account_id=account_id).update(
                status=Hold.Status.RELEASED, closed_at=now)
            if hold.status == Hold.Status.OPEN:
                Account.objects.filter(id=hold.account_id).update(
                    held_nanos=F("held_nanos") - hold.reserved_nanos,
                    slots_in_use=F("slots_in_use") - hold.weight)
    return HoldReleased(hold_id=hold.id)


def hold_heartbeat(*, hold_id, now: datetime | None = None) -> LeaseExtended:
    """Extend the lease of a long run. A hold whose lease already ran out stays expired."""
    now = now or timezone.now()
    hold_uuid = hold_id_parse(hold_id)
    lease_expires_at = now + settings.HOLD_LEASE
    updated = Hold.objects.filter(id=hold_uuid, status=Hold.Status.OPEN,
                                  lease_expires_at__gt=now).update(
        lease_expires_at=lease_expires_at)
    if not updated:
        hold = hold_get(hold_uuid)
        status = Hold.Status.EXPIRED if hold.status == Hold.Status.OPEN else hold.status
        raise HoldClosed(extra={"hold_status": status})
    return LeaseExtended(hold_id=hold_uuid, lease_expires_at=lease_expires_at)
