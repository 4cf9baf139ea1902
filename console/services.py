"""Staff actions: each one checks the actor's role, goes through the product's own
service (the same one the API, the run path or Stripe's webhooks use), and writes its
audit row with the reason, and the account's money before and after, in the same
database transaction.

Roles are Django permissions (`console.*`, granted to the Support and Finance groups by
migration 0003); they are checked here, so a request that skips the console's buttons is
refused all the same."""

from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from django.conf import settings
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.utils import timezone

from accounts.locks import account_lock
from accounts.models import Account, ApiKey, User
from accounts.services import account_status_set, api_key_revoke
from billing.auto_reload import AutoReloadSettings, auto_reload_settings_set
from billing.credit import _lot_add, credit_debit, credit_grant
from billing.ledger import Book, Kind, Leg
from billing.locks import billing_profile_lock
from billing.models import BillingProfile, Purchase, StripeEvent
from billing.refunds import purchase_refund
from billing.webhooks import stripe_event_process
from config.admin_bases import usd
from config.api import ApplicationError
from config.money import NANOS_PER_USD, nanos_to_usd
from console.models import StaffAction
from metering.holds import hold_release
from metering.models import Hold

Action = StaffAction.Kind


class StaffActionRefused(ApplicationError):
    code = "staff_action_refused"
    message = "This action cannot be taken."


@dataclass(frozen=True, slots=True)
class StaffActionResult:
    audit: StaffAction
    summary: str


def support_grant_limit_nanos() -> int:
    return int(settings.STAFF_SUPPORT_GRANT_LIMIT_USD) * NANOS_PER_USD


def account_money_snapshot(*, account_id: UUID) -> dict[str, Any]:
    """What staff compare before and after an action, in dollars."""
    account = Account.objects.select_related("tier").get(id=account_id)
    profile = BillingProfile.objects.filter(account_id=account_id).first()
    return {
        "balance_usd": nanos_to_usd(account.balance_nanos),
        "held_usd": nanos_to_usd(account.held_nanos),
        "available_usd": nanos_to_usd(account.balance_nanos - account.held_nanos),
        "receivable_usd": nanos_to_usd(account.receivable_nanos),
        "slots_in_use": account.slots_in_use,
        "status": account.status,
        "status_reason": account.status_reason,
        "tier": account.tier.name if account.tier_id else None,
        "plan": account.plan_id,
        "auto_reload": _auto_reload_state(profile),
    }


def _auto_reload_state(profile: BillingProfile | None) -> str:
    if profile is None or not profile.auto_reload_enabled:
        return "off"
    if profile.auto_reload_paused_at is not None:
        return f"paused: {profile.auto_reload_paused_reason}"
    return "on"


def _require(actor: User, permission: str) -> None:
    if not (actor.is_active and actor.is_staff and actor.has_perm(f"console.{permission}")):
        raise PermissionDenied(f"Your role does not allow this ({permission}).")


def _reason_clean(reason: str) -> str:
    reason = (reason or "").strip()
    if not reason:
        raise StaffActionRefused("A reason is required.")
    return reason


def _audit(*, actor: User, kind: str, reason: str, summary: str, account_id: UUID | None,
           before: dict, after: dict, target: str = "",
           now: datetime | None = None) -> StaffAction:
    return StaffAction.objects.create(
        actor=actor, actor_email=actor.email, kind=kind, account_id=account_id,
        target=target[:255], reason=reason, before=before, after=after,
        summary=summary[:255], created_at=now or timezone.now())


def _money_positive(amount_nanos: int) -> None:
    if amount_nanos <= 0:
        raise StaffActionRefused("The amount must be more than $0.")


@transaction.atomic
def staff_credit_grant(*, actor: User, account_id: UUID, amount_nanos: int, reason: str,
                       expires_at: datetime | None = None) -> StaffActionResult:
    """Promotional credit (a lot that expires like any other, never counting toward the
    tier). Support may grant up to STAFF_SUPPORT_GRANT_LIMIT_USD at a time."""
    _require(actor, "grant_credit")
    reason = _reason_clean(reason)
    _money_positive(amount_nanos)
    if amount_nanos > support_grant_limit_nanos() and not actor.has_perm(
            "console.grant_credit_unlimited"):
        raise PermissionDenied(
            f"Your role may grant at most ${settings.STAFF_SUPPORT_GRANT_LIMIT_USD} at a time.")
    account_lock(account_id=account_id)
    before = account_money_snapshot(account_id=account_id)
    lot, _ = credit_grant(account_id=account_id, amount_nanos=amount_nanos,
                          reason=f"Staff grant: {reason}", expires_at=expires_at)
    summary = f"Granted {usd(amount_nanos)}"
    audit = _audit(actor=actor, kind=Action.CREDIT_GRANT, reason=reason, summary=summary,
                   account_id=account_id, before=before,
                   after=account_money_snapshot(account_id=account_id), target=f"lot {lot.id}")
    return StaffActionResult(audit=audit, summary=summary)


@transaction.atomic
def staff_credit_adjust(*, actor: User, account_id: UUID, amount_nanos: int,
                        reason: str) -> StaffActionResult:
    """A correction, booked against `staff_adjustment`: positive adds a lot, negative
    takes credit back, soonest-expiring first, never more than the account's available
    credit (what open holds reserve stays)."""
    _require(actor, "adjust_credit")
    reason = _reason_clean(reason)
    if amount_nanos == 0:
        raise StaffActionRefused("An adjustment of $0 changes nothing.")
    account = account_lock(account_id=account_id)
    before = account_money_snapshot(account_id=account_id)
    if amount_nanos > 0:
        lot, _ = _lot_add(account=account, source="staff_grant", amount_nanos=amount_nanos,
                          funded_by=[Leg(Book.STAFF_ADJUSTMENT, -amount_nanos)],
                          kind=Kind.ADJUSTMENT, memo=f"Staff adjustment: {reason}",
                          now=timezone.now(), reason=f"Staff adjustment: {reason}")
        target = f"lot {lot.id}"
    else:
        credit_debit(account_id=account_id, amount_nanos=-amount_nanos,
                     reason=f"Staff adjustment: {reason}")
        target = ""
    summary = f"Adjusted credit by {'+' if amount_nanos > 0 else ''}{usd(amount_nanos)}"
    audit = _audit(actor=actor, kind=Action.CREDIT_ADJUST, reason=reason, summary=summary,
                   account_id=account_id, before=before,
                   after=account_money_snapshot(account_id=account_id), target=target)
    return StaffActionResult(audit=audit, summary=summary)


def staff_purchase_refund(*, actor: User, purchase_id: UUID, reason: str,
                          amount_nanos: int | None = None) -> StaffActionResult:
    """Refund through Stripe, with the claw-back of the lot's unspent credit
    (billing.refunds). Stripe is called inside the transaction that then records the
    refund and its audit row, as billing.refunds does."""
    _require(actor, "refund_purchase")
    reason = _reason_clean(reason)
    purchase = Purchase.objects.get(id=purchase_id)
    with transaction.atomic():
        before = {**account_money_snapshot(account_id=purchase.account_id),
                  "purchase_refunded_usd": nanos_to_usd(purchase.refunded_nanos)}
        reversal = purchase_refund(purchase_id=purchase.id, amount_nanos=amount_nanos,
                                   reason=reason)
        purchase.refresh_from_db()
        summary = (f"Refunded {usd(reversal.amount_nanos)}, clawed back "
                   f"{usd(reversal.clawed_nanos)} ({reversal.stripe_id})")
        audit = _audit(actor=actor, kind=Action.PURCHASE_REFUND, reason=reason,
                       summary=summary, account_id=purchase.account_id, before=before,
                       after={**account_money_snapshot(account_id=purchase.account_id),
                              "purchase_refunded_usd": nanos_to_usd(purchase.refunded_nanos)},
                       target=f"purchase {purchase.reference}")
    return StaffActionResult(audit=audit, summary=summary)


@transaction.atomic
def staff_account_suspend(*, actor: User, account_id: UUID, reason: str) -> StaffActionResult:
    """A suspended account's runs are refused (`account_suspended`) from the next
    authorize on."""
    _require(actor, "suspend_account")
    reason = _reason_clean(reason)
    account_lock(account_id=account_id)
    before = account_money_snapshot(account_id=account_id)
    if before["status"] == Account.Status.SUSPENDED:
        raise StaffActionRefused("The account is already suspended.")
    account_status_set(account_id=account_id, status=Account.Status.SUSPENDED,
                       reason=f"Suspended by staff: {reason}")
    audit = _audit(actor=actor, kind=Action.ACCOUNT_SUSPEND, reason=reason,
                   summary="Suspended the account", account_id=account_id, before=before,
                   after=account_money_snapshot(account_id=account_id))
    return StaffActionResult(audit=audit, summary=audit.summary)


@transaction.atomic
def staff_account_reinstate(*, actor: User, account_id: UUID,
                            reason: str) -> StaffActionResult:
    _require(actor, "suspend_account")
    reason = _reason_clean(reason)
    account_lock(account_id=account_id)
    before = account_money_snapshot(account_id=account_id)
    if before["status"] == Account.Status.ACTIVE:
        raise StaffActionRefused("The account is not suspended.")
    account_status_set(account_id=account_id, status=Account.Status.ACTIVE, reason="")
    audit = _audit(actor=actor, kind=Action.ACCOUNT_REINSTATE, reason=reason,
                   summary="Reinstated the account", account_id=account_id, before=before,
                   after=account_money_snapshot(account_id=account_id))
    return StaffActionResult(audit=audit, summary=audit.summary)


@transaction.atomic
def staff_hold_release(*, actor: User, hold_id: UUID, reason: str) -> StaffActionResult:
    """Free a stuck hold's money and slots without a charge, through the run path's own
    release (the gateway's `/release`)."""
    _require(actor, "release_hold")
    reason = _reason_clean(reason)
    hold = Hold.objects.get(id=hold_id)
    account_lock(account_id=hold.account_id)
    hold.refresh_from_db()
    if hold.status != Hold.Status.OPEN:
        raise StaffActionRefused(f"The hold is {hold.status}, not open.")
    before = account_money_snapshot(account_id=hold.account_id)
    hold_release(hold_id=hold.id)
    summary = f"Released a hold ({usd(hold.reserved_nanos)}, {hold.weight} slot(s))"
    audit = _audit(actor=actor, kind=Action.HOLD_RELEASE, reason=reason, summary=summary,
                   account_id=hold.account_id, before=before,
                   after=account_money_snapshot(account_id=hold.account_id),
                   target=f"hold {hold.id}")
    return StaffActionResult(audit=audit, summary=summary)


@transaction.atomic
def staff_api_key_revoke(*, actor: User, key_id: UUID, reason: str) -> StaffActionResult:
    """The key fails authorize from its next call (the run path checks revocation in
    its own statement)."""
    _require(actor, "revoke_key")
    reason = _reason_clean(reason)
    key = ApiKey.objects.get(id=key_id)
    if key.revoked_at is not None:
        raise StaffActionRefused("The key is already revoked.")
    before = {"key": key.prefix, "revoked_at": None}
    key = api_key_revoke(account_id=key.account_id, key_id=key.id)
    summary = f"Revoked key {key.name} ({key.prefix}…)"
    audit = _audit(actor=actor, kind=Action.KEY_REVOKE, reason=reason, summary=summary,
                   account_id=key.account_id, before=before,
                   after={"key": key.prefix, "revoked_at": key.revoked_at.isoformat()},
                   target=f"key {key.prefix}")
    return StaffActionResult(audit=audit, summary=summary)


def staff_auto_reload_resume(*, actor: User, account_id: UUID,
                             reason: str) -> StaffActionResult:
    """Resume a paused auto-reload with the customer's own settings, exactly as the
    customer saving them again would (billing.auto_reload); a reload starts at once if the
    balance is already below the threshold."""
    _require(actor, "resume_auto_reload")
    reason = _reason_clean(reason)
    with transaction.atomic():
        profile = billing_profile_lock(account_id=account_id)
        if not profile.auto_reload_enabled or profile.auto_reload_paused_at is None:
            raise StaffActionRefused("Auto-reload is not paused on this account.")
        before = account_money_snapshot(account_id=account_id)
        auto_reload_settings_set(account_id=account_id, settings_=AutoReloadSettings(
            enabled=True, threshold_nanos=profile.auto_reload_threshold_nanos,
            amount_nanos=profile.auto_reload_amount_nanos,
            monthly_max_nanos=profile.auto_reload_monthly_max_nanos,
            card_id=profile.auto_reload_card_id))
        audit = _audit(actor=actor, kind=Action.AUTO_RELOAD_RESUME, reason=reason,
                       summary="Resumed auto-reload", account_id=account_id, before=before,
                       after=account_money_snapshot(account_id=account_id))
    return StaffActionResult(audit=audit, summary=audit.summary)


def staff_stripe_event_reprocess(*, actor: User, event_id: int,
                                 reason: str) -> StaffActionResult:
    """Run a stored event that failed through the webhook's own processing again."""
    _require(actor, "reprocess_stripe_event")
    reason = _reason_clean(reason)
    event = StripeEvent.objects.get(id=event_id)
    if event.processed_at is not None:
        raise StaffActionRefused("The event was processed already.")
    before = {"attempts": event.attempts, "last_error": event.last_error}
    account_id = None
    try:
        outcome = stripe_event_process(stripe_id=event.stripe_id)
    except Exception as exc:
        raise StaffActionRefused(f"Processing failed again: {exc!r}"[:500]) from exc
    event.refresh_from_db()
    summary = f"Reprocessed {event.type} {event.stripe_id}: {outcome}"
    audit = _audit(actor=actor, kind=Action.STRIPE_EVENT_REPROCESS, reason=reason,
                   summary=summary, account_id=account_id, before=before,
                   after={"attempts": event.attempts, "outcome": event.outcome,
                          "processed_at": event.processed_at.isoformat()},
                   target=f"event {event.stripe_id}")
    return StaffActionResult(audit=audit, summary=summary)


def staff_table_edit_record(*, actor: User, table: str, row: str, reason: str,
                            before: dict, after: dict) -> StaffAction:
    """A price, size-class, tier, plan or model row saved in the console. Called by the
    admin in the transaction that saves the row."""
    reason = _reason_clean(reason)
    verb = "Added" if not before else "Changed"
    return _audit(actor=actor, kind=Action.TABLE_EDIT, reason=reason,
                  summary=f"{verb} {table} {row}", account_id=None, before=before,
                  after=after, target=f"{table} {row}")
