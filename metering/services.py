import uuid
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from fractions import Fraction
from functools import partial
from uuid import UUID

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import IntegrityError, connection, transaction
from django.db.models import BooleanField, Exists, ExpressionWrapper, F, Q, Sum
from django.db.models.functions import Coalesce
from django.utils import timezone

from accounts.authentication import InvalidApiKey
from accounts.locks import account_lock
from accounts.models import Account, ApiKey
from accounts.services import api_key_touch
from billing.ledger import Book, Leg, ledger_post
from billing.ledger import Kind as LedgerKind
from billing.models import CreditLot
from billing.money import nanos_to_usd
from billing.services import (
    InsufficientCredit,
    account_balance_apply,
    credit_consume,
    credit_lots_expire,
    low_balance_event_dispatch,
    low_balance_record,
)
from config.api import ApplicationError
from metering import sql
from metering.catalog import (
    KeyRef,
    ModelPrice,
    Policy,
    account_plan_code,
    api_key_ref,
    catalog_caches_clear,
    model_price,
    plan_closed_rps,
    pricing_policy,
)
from metering.exceptions import (
    AccountSuspended,
    ConcurrencyLimit,
    HoldClosed,
    HoldNotFound,
    ModelSizeLocked,
    RateLimited,
    UsageMismatch,
)
from metering.models import Hold, InferenceModel, SizeClass, UsageRecord
from metering.pricing import (
    billed_seconds_for,
    closed_charge_from_cost,
    open_charge,
    token_cost,
)
from ratelimits.models import Tier
from ratelimits.services import account_tier_refresh


class ModelNotFound(ApplicationError):
    status = 404
    code = "model_not_found"
    message = "No model with this id."


class ModelTooLarge(ApplicationError):
    code = "invalid_request"


@transaction.atomic
def model_upsert(*, model_id: str, kind: str, params_b: Decimal | None = None,
                 provider: str = "", input_nanos_per_mtok: int | None = None,
                 output_nanos_per_mtok: int | None = None,
                 now: datetime | None = None) -> tuple[InferenceModel, bool]:
    """Create or replace a model in the catalog."""
    now = now or timezone.now()
    if kind == InferenceModel.Kind.OPEN:
        largest = SizeClass.objects.order_by("-max_params_b").first()
        if largest is None or params_b > largest.max_params_b:
            limit = f"{largest.max_params_b.normalize():f}B" if largest else "no size class"
            raise ModelTooLarge(
                f"No size class holds a {params_b.normalize():f}B model (largest: {limit}).",
                extra={"fields": {"params_b": [f"At most {limit}."]}},
            )
        values = {"kind": kind, "params_b": params_b, "provider": "",
                  "input_nanos_per_mtok": None, "output_nanos_per_mtok": None}
    else:
        values = {"kind": kind, "params_b": None, "provider": provider,
                  "input_nanos_per_mtok": input_nanos_per_mtok,
                  "output_nanos_per_mtok": output_nanos_per_mtok}
    model, created = InferenceModel.objects.update_or_create(
        id=model_id, defaults={**values, "updated_at": now}, create_defaults={
            **values, "created_at": now, "updated_at": now})
    # Now for this transaction's own reads, and after commit for everyone else's.
    catalog_caches_clear()
    transaction.on_commit(catalog_caches_clear)
    return model, created


# --- The run path ---------------------------------------------------------------------------
#
# Authorize is TigerBeetle's pending transfer: one conditional statement reserves money and
# slots and inserts the hold (metering/sql.py). Only when it refuses does the slow path run:
# lock the account, bring it up to date (record expired credit, recompute a stale tier,
# expire lapsed holds), then try the same statement again or name the reason.


@dataclass(frozen=True, slots=True)
class Authorization:
    hold_id: UUID
    account_id: UUID
    reserved_nanos: int
    lease_expires_at: datetime
    balance_nanos: int
    held_nanos: int
    slots_in_use: int
    tier_name: str | None
    tier_max_params_b: Decimal
    tier_concurrency: int
    replayed: bool = False


@dataclass(frozen=True, slots=True)
class Reservation:
    """What an authorize asks for, priced before any database work."""

    key: KeyRef
    model: ModelPrice
    request_id: str
    byok: bool
    reserve_nanos: int
    weight: int
    policy: Policy


def _reservation_price(*, model: ModelPrice, policy: Policy, byok: bool,
                       estimate_seconds: Decimal | None, estimate_input_tokens: int | None,
                       estimate_max_output_tokens: int | None) -> int:
    # A run that is not BYOK always reserves something (an estimate of zero reserves one
    # second, or one nano-dollar), so an account with nothing available gets its 402.
    if model.kind == InferenceModel.Kind.OPEN:
        seconds = policy.default_estimate_seconds if estimate_seconds is None \
            else estimate_seconds
        return open_charge(billed_seconds=max(1, billed_seconds_for(Decimal(seconds))),
                           nanos_per_second=model.nanos_per_second)
    if byok:
        return policy.byok_fee_nanos
    cost = token_cost(
        input_tokens=policy.default_estimate_input_tokens if estimate_input_tokens is None
        else estimate_input_tokens,
        output_tokens=policy.default_estimate_output_tokens
        if estimate_max_output_tokens is None else estimate_max_output_tokens,
        input_nanos_per_mtok=model.input_nanos_per_mtok,
        output_nanos_per_mtok=model.output_nanos_per_mtok)
    return max(1, closed_charge_from_cost(provider_cost=cost,
                                          fee_ppm=policy.platform_fee_ppm).total_nanos)


def _reserve_params(*, reservation: Reservation, hold_id: UUID, now: datetime,
                    lease_expires_at: datetime) -> dict:
    model, policy = reservation.model, reservation.policy
    return {
        "hold_id": sql.db_uuid(hold_id), "account_id": sql.db_uuid(reservation.key.account_id),
        "key_id": sql.db_uuid(reservation.key.key_id), "model_id": model.id,
        "request_id": reservation.request_id, "kind": model.kind, "byok": reservation.byok,
        "reserve": reservation.reserve_nanos, "weight": reservation.weight,
        "class_params_b": model.class_params_b, "nanos_per_second": model.nanos_per_second,
        "input_nanos_per_mtok": model.input_nanos_per_mtok,
        "output_nanos_per_mtok": model.output_nanos_per_mtok,
        "platform_fee_ppm": policy.platform_fee_ppm if model.kind == "closed" else 0,
        "byok_fee_nanos": policy.byok_fee_nanos if reservation.byok else 0,
        "now": sql.db_datetime(now), "lease_expires_at": sql.db_datetime(lease_expires_at),
    }


def _try_reserve(*, reservation: Reservation, now: datetime) -> Authorization | None:
    hold_id = uuid.uuid4()
    lease_expires_at = now + settings.HOLD_LEASE
    row = sql.authorize_reserve(_reserve_params(reservation=reservation, hold_id=hold_id,
                                                now=now, lease_expires_at=lease_expires_at))
    if row is None:
        return None
    balance, held, slots, max_params_b, concurrency, tier_name = row
    return Authorization(hold_id=hold_id, account_id=reservation.key.account_id,
                         reserved_nanos=reservation.reserve_nanos,
                         lease_expires_at=lease_expires_at, balance_nanos=balance,
                         held_nanos=held, slots_in_use=slots, tier_name=tier_name,
                         tier_max_params_b=Decimal(max_params_b), tier_concurrency=concurrency)


def _replay(*, hold: Hold, account: Account) -> Authorization:
    """The same request_id again: the first hold, never a second reservation."""
    return Authorization(hold_id=hold.id, account_id=account.id,
                         reserved_nanos=hold.reserved_nanos,
                         lease_expires_at=hold.lease_expires_at,
                         balance_nanos=account.balance_nanos, held_nanos=account.held_nanos,
                         slots_in_use=account.slots_in_use,
                         tier_name=account.tier.name if account.tier_id else None,
                         tier_max_params_b=account.tier_max_params_b,
                         tier_concurrency=account.tier_concurrency, replayed=True)


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


def _required_purchase_nanos(*, params_b: Decimal) -> int | None:
    tier = (Tier.objects.filter(max_params_b__gte=params_b)
            .order_by("min_purchased_nanos").first())
    return tier.min_purchased_nanos if tier else None


def _refusal(*, account: Account, reservation: Reservation) -> ApplicationError | None:
    """Why the locked, current account cannot take this reservation (contract order)."""
    if account.status != Account.Status.ACTIVE:
        return AccountSuspended(extra={"reason": account.status_reason}
                                if account.status_reason else None)
    model = reservation.model
    if model.class_params_b > account.tier_max_params_b:
        required = _required_purchase_nanos(params_b=model.class_params_b)
        extra = {"model_size_class": model.size_class,
                 "tier": account.tier.name if account.tier_id else None}
        if required is not None:
            extra["required_purchase_usd"] = nanos_to_usd(required)
            extra["purchased_last_4_weeks_usd"] = nanos_to_usd(account.purchased_window_nanos)
        return ModelSizeLocked(
            f"The {model.size_class} size class needs credits purchased in the last 4 weeks "
            f"of at least ${nanos_to_usd(required or 0)}." if required is not None
            else "No tier unlocks this model size.", extra=extra)
    # A run that takes no slot (a closed model) is never refused for slots, not even when
    # a lower tier now allows fewer than the runs still going.
    if reservation.weight and \
            account.slots_in_use + reservation.weight > account.tier_concurrency:
        return ConcurrencyLimit(
            extra={"limit": account.tier_concurrency, "in_use": account.slots_in_use,
                   "requested": reservation.weight},
            headers={"Retry-After": "1"})
    if account.balance_nanos - account.held_nanos < reservation.reserve_nanos:
        return InsufficientCredit(extra={
            "reserve_usd": nanos_to_usd(reservation.reserve_nanos),
            "available_usd": nanos_to_usd(max(0, account.balance_nanos - account.held_nanos)),
        })
    return None


def _usable_key(now: datetime) -> Q:
    return Q(revoked_at__isnull=True) & (Q(expires_at__isnull=True) | Q(expires_at__gt=now))


def _api_key_usable(*, key_id: UUID, now: datetime) -> bool:
    return ApiKey.objects.filter(_usable_key(now), id=key_id).exists()


def _authorize_slow(*, reservation: Reservation, now: datetime) -> Authorization:
    with transaction.atomic():
        account = account_lock(account_id=reservation.key.account_id)
        if not _api_key_usable(key_id=reservation.key.key_id, now=now):
            # Revoked: refused from the next call on, a retried request_id included.
            refusal = InvalidApiKey()
        else:
            account_bring_current_locked(account=account, now=now)
            existing = Hold.objects.filter(account=account,
                                           request_id=reservation.request_id).first()
            if existing is not None:
                if account.status != Account.Status.ACTIVE:
                    refusal = _refusal(account=account, reservation=reservation)
                else:
                    return _replay(hold=existing, account=account)
            else:
                refusal = _refusal(account=account, reservation=reservation)
                if refusal is None:
                    authorization = _try_reserve(reservation=reservation, now=now)
                    if authorization is not None:
                        return authorization
                    # Every rule held under the lock; only the key, which a revocation
                    # changes without the account lock, can have moved since.
                    if _api_key_usable(key_id=reservation.key.key_id, now=now):
                        raise RuntimeError("reservation refused with no rule broken")
                    refusal = InvalidApiKey()
    # Raised after commit: the bookkeeping above (expiry, lapsed holds) stays done.
    raise refusal


def _closed_rate_limit(*, reservation: Reservation, request, now: datetime) -> None:
    from django_ratelimit.core import get_usage

    rps = plan_closed_rps(account_plan_code(reservation.key.account_id))
    if not rps:
        return
    key = reservation.key
    usable, retried = ApiKey.objects.filter(id=key.key_id).values_list(
        ExpressionWrapper(_usable_key(now), output_field=BooleanField()),
        Exists(Hold.objects.filter(account_id=key.account_id,
                                   request_id=reservation.request_id)),
    ).first() or (False, False)
    if not usable:
        raise InvalidApiKey()  # a revoked key must not use up the account's requests
    if retried:
        return  # a retry of a request already counted; the slow path answers it
    usage = get_usage(request, group="closed-model-requests", rate=f"{rps}/s",
                      key=lambda group, req: str(reservation.key.account_id), increment=True)
    if usage is not None and usage["should_limit"]:
        raise RateLimited(extra={"limit_per_second": rps},
                          headers={"Retry-After": str(max(1, usage["time_left"]))})


def hold_authorize(*, api_key: str, model_id: str, request_id: str, byok: bool = False,
                   auto_scale: bool = False, estimate_seconds: Decimal | None = None,
                   estimate_input_tokens: int | None = None,
                   estimate_max_output_tokens: int | None = None, request=None,
                   now: datetime | None = None) -> Authorization:
    """May this key run this model now? If so, reserve the money and slots as a hold."""
    now = now or timezone.now()
    key = api_key_ref(api_key)
    if key is None:
        raise InvalidApiKey()
    model = model_price(model_id)
    if model is None:
        raise ModelNotFound()
    policy = pricing_policy()
    byok = byok and model.kind == InferenceModel.Kind.CLOSED
    reservation = Reservation(
        key=key, model=model, request_id=request_id, byok=byok, policy=policy,
        weight=model.weight,
        reserve_nanos=_reservation_price(
            model=model, policy=policy, byok=byok, estimate_seconds=estimate_seconds,
            estimate_input_tokens=estimate_input_tokens,
            estimate_max_output_tokens=estimate_max_output_tokens))
    if model.kind == InferenceModel.Kind.CLOSED and not byok:
        _closed_rate_limit(reservation=reservation, request=request, now=now)
    try:
        if connection.in_atomic_block:  # keep a caller's transaction usable on a conflict
            with transaction.atomic():
                authorization = _try_reserve(reservation=reservation, now=now)
        else:
            authorization = _try_reserve(reservation=reservation, now=now)
    except IntegrityError:
        authorization = None  # this request_id has a hold already: the slow path returns it
    if authorization is None:
        authorization = _authorize_with_slow_path(reservation=reservation, now=now,
                                                  auto_scale=auto_scale)
    api_key_touch(api_key_id=key.key_id, now=now)
    return authorization


def _authorize_with_slow_path(*, reservation: Reservation, now: datetime,
                              auto_scale: bool) -> Authorization:
    key = reservation.key
    try:
        return _authorize_slow(reservation=reservation, now=now)
    except ConcurrencyLimit:
        if not auto_scale or not _auto_scale(account_id=key.account_id, now=now):
            raise
    return _authorize_slow(reservation=reservation, now=timezone.now())


def _auto_scale(*, account_id: UUID, now: datetime) -> bool:
    """Buy the credits that unlock the next tier, within the account's limits."""
    from billing.payments import auto_scale_purchase

    return auto_scale_purchase(account_id=account_id, now=now)


# --- Settle, release, heartbeat -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Usage:
    """What the gateway reports after a run."""

    inference_seconds: Decimal | None = None
    load_seconds: Decimal | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    provider_cost_nanos: int | None = None


@dataclass(frozen=True, slots=True)
class Charge:
    total_nanos: int
    billed_seconds: int | None
    provider_cost_nanos: int | None
    revenue: tuple[Leg, ...]  # where the money goes (one or two legs)


def _hold_get(hold_id) -> Hold:
    try:
        return Hold.objects.get(id=hold_id)
    except (Hold.DoesNotExist, ValidationError, ValueError, TypeError):
        raise HoldNotFound() from None


def _needs_seconds() -> UsageMismatch:
    return UsageMismatch(extra={"fields": {"inference_seconds": [
        "Required to settle an open-model run."]}})


def _needs_cost() -> UsageMismatch:
    return UsageMismatch(extra={"fields": {"provider_cost_usd": [
        "Send input_tokens and output_tokens, or provider_cost_usd."]}})


def _charge_for(*, hold: Hold, usage: Usage) -> Charge:
    """The run's price, as metering_settle computes it on PostgreSQL."""
    account_id = hold.account_id
    if hold.kind == InferenceModel.Kind.OPEN:
        if usage.inference_seconds is None:
            raise _needs_seconds()
        seconds = billed_seconds_for(usage.inference_seconds)
        total = open_charge(billed_seconds=seconds, nanos_per_second=hold.nanos_per_second)
        return Charge(total, seconds, None, (Leg(Book.OPEN_REVENUE, total, account_id),))
    if hold.byok:
        fee = hold.byok_fee_nanos
        return Charge(fee, None, None, (Leg(Book.BYOK_FEE, fee, account_id),))
    if usage.provider_cost_nanos is not None:
        cost = Fraction(usage.provider_cost_nanos)
    elif usage.input_tokens is not None and usage.output_tokens is not None:
        cost = token_cost(input_tokens=usage.input_tokens, output_tokens=usage.output_tokens,
                          input_nanos_per_mtok=hold.input_nanos_per_mtok,
                          output_nanos_per_mtok=hold.output_nanos_per_mtok)
    else:
        raise _needs_cost()
    charge = closed_charge_from_cost(provider_cost=cost, fee_ppm=hold.platform_fee_ppm)
    return Charge(charge.total_nanos, None, charge.provider_cost_nanos,
                  (Leg(Book.PROVIDER_PASSTHROUGH, charge.provider_cost_nanos, account_id),
                   Leg(Book.PLATFORM_FEE, charge.fee_nanos, account_id)))


@dataclass(frozen=True, slots=True)
class Settlement:
    """What a settle charged and left; stored on the hold, so that settling again
    answers exactly the same."""

    hold_id: UUID
    charged_nanos: int
    billed_seconds: int | None
    unpaid_nanos: int
    balance_after_nanos: int
    available_after_nanos: int

    def answer(self) -> dict:
        return {
            "hold_id": str(self.hold_id), "status": Hold.Status.SETTLED,
            "charged_usd": nanos_to_usd(self.charged_nanos),
            "billed_seconds": self.billed_seconds,
            "balance_usd": nanos_to_usd(self.balance_after_nanos),
            "available_usd": nanos_to_usd(self.available_after_nanos),
            "unpaid_usd": nanos_to_usd(self.unpaid_nanos),
        }


def _settlement_of(hold: Hold) -> Settlement:
    return Settlement(hold.id, hold.charged_nanos, hold.billed_seconds, hold.unpaid_nanos,
                      hold.balance_after_nanos, hold.available_after_nanos)


def _hold_closed_refusal(*, hold: Hold, now: datetime) -> HoldClosed | None:
    """A settle is refused for a released hold, and for one whose lease ran out longer
    ago than the late-settle window."""
    lease_lapsed = hold.lease_expires_at <= now
    if hold.status == Hold.Status.RELEASED or (
            (hold.status == Hold.Status.EXPIRED or lease_lapsed)
            and now > hold.lease_expires_at + settings.LATE_SETTLE_WINDOW):
        status = Hold.Status.EXPIRED if hold.status == Hold.Status.OPEN else hold.status
        return HoldClosed(extra={"hold_status": status})
    return None


def hold_settle(*, hold_id, usage: Usage, now: datetime | None = None) -> dict:
    """Charge the run's actual usage (possibly more or less than reserved), free its slot,
    consume credit soonest-expiring first and record the usage. Settling again returns the
    first result and charges nothing more."""
    now = now or timezone.now()
    hold_uuid = _hold_uuid(hold_id)
    if sql.is_postgresql():
        return _hold_settle_postgresql(hold_id=hold_uuid, usage=usage, now=now).answer()
    return _hold_settle_portable(hold_id=hold_uuid, usage=usage, now=now).answer()


def _hold_settle_postgresql(*, hold_id: UUID, usage: Usage, now: datetime) -> Settlement:
    """One statement: the database function metering_settle locks the account, decides,
    prices and writes (migration metering/0006 holds it)."""
    (outcome, hold_status, charged, billed_seconds, unpaid, balance_after, available_after,
     low_balance_event_id) = sql.settle_postgresql(
        hold_id=hold_id, now=now, late_window=settings.LATE_SETTLE_WINDOW,
        inference_seconds=usage.inference_seconds, load_seconds=usage.load_seconds,
        input_tokens=usage.input_tokens, output_tokens=usage.output_tokens,
        provider_cost_nanos=usage.provider_cost_nanos)
    if outcome == "not_found":
        raise HoldNotFound()
    if outcome == "closed":
        raise HoldClosed(extra={"hold_status": hold_status})
    if outcome == "needs_seconds":
        raise _needs_seconds()
    if outcome == "needs_cost":
        raise _needs_cost()
    if low_balance_event_id is not None:
        # Committed already, unless a caller's transaction encloses this one.
        transaction.on_commit(partial(low_balance_event_dispatch,
                                      event_id=low_balance_event_id))
    return Settlement(hold_id, charged, billed_seconds, unpaid, balance_after, available_after)


@transaction.atomic
def _hold_settle_portable(*, hold_id: UUID, usage: Usage, now: datetime) -> Settlement:
    """The same decisions and writes as metering_settle, through the ORM, for databases
    other than PostgreSQL (tests/metering/test_settle_paths.py runs both and compares)."""
    account_id = Hold.objects.filter(id=hold_id).values_list("account_id", flat=True).first()
    if account_id is None:
        raise HoldNotFound()
    account = account_lock(account_id=account_id)
    hold = Hold.objects.get(id=hold_id)  # current, now that the account is locked
    if hold.status == Hold.Status.SETTLED:
        return _settlement_of(hold)
    refusal = _hold_closed_refusal(hold=hold, now=now)
    if refusal is not None:
        raise refusal
    charge = _charge_for(hold=hold, usage=usage)
    # An open hold still holds its money and slots (even when its lease lapsed and no
    # sweep has run yet); an expired one gave them back already.
    is_open = hold.status == Hold.Status.OPEN
    release_held = hold.reserved_nanos if is_open else 0
    release_slots = hold.weight if is_open else 0
    # The balance reported is the live credit left: a lot that expired before its expiry
    # was recorded is still in the working balance but no longer spendable.
    live = _live_credit(account_id=account.id, now=now)
    consumed = credit_consume(account=account, amount_nanos=charge.total_nanos, now=now)
    settlement = Settlement(
        hold.id, charge.total_nanos, charge.billed_seconds, consumed.shortfall_nanos,
        live - consumed.covered_nanos,
        max(0, live - consumed.covered_nanos - (account.held_nanos - release_held)))
    Hold.objects.filter(id=hold.id).update(
        status=Hold.Status.SETTLED, closed_at=now, charged_nanos=settlement.charged_nanos,
        billed_seconds=settlement.billed_seconds, unpaid_nanos=settlement.unpaid_nanos,
        balance_after_nanos=settlement.balance_after_nanos,
        available_after_nanos=settlement.available_after_nanos)
    legs = [*consumed.legs, *charge.revenue]
    if consumed.shortfall_nanos:
        legs.append(Leg(Book.CUSTOMER_RECEIVABLE, -consumed.shortfall_nanos, account.id))
    if charge.total_nanos:  # a run charged nothing moves no value: no ledger transaction
        ledger_post(kind=LedgerKind.USAGE, account_id=account.id, now=now,
                    memo=f"{hold.model_id} run {hold.request_id}", legs=legs)
    Account.objects.filter(id=account.id).update(
        held_nanos=F("held_nanos") - release_held,
        slots_in_use=F("slots_in_use") - release_slots)
    balance_before = account.balance_nanos
    account_balance_apply(account=account, balance_delta=-consumed.covered_nanos,
                          receivable_delta=consumed.shortfall_nanos)
    UsageRecord.objects.create(
        hold=hold, account_id=hold.account_id, api_key_id=hold.api_key_id,
        model_id=hold.model_id, kind=hold.kind, byok=hold.byok,
        inference_seconds=usage.inference_seconds, load_seconds=usage.load_seconds,
        billed_seconds=charge.billed_seconds, input_tokens=usage.input_tokens,
        output_tokens=usage.output_tokens, provider_cost_nanos=charge.provider_cost_nanos,
        charged_nanos=charge.total_nanos, unpaid_nanos=consumed.shortfall_nanos,
        created_at=now)
    # The crossing is recorded here, and auto-reload told once this transaction commits.
    low_balance_record(account=account, balance_before_nanos=balance_before, now=now)
    return settlement


def _hold_uuid(hold_id) -> UUID:
    try:
        return hold_id if isinstance(hold_id, UUID) else UUID(str(hold_id))
    except ValueError:
        raise HoldNotFound() from None


def _live_credit(*, account_id: UUID, now: datetime) -> int:
    """Credit that has not expired, whether or not an expiry was recorded."""
    return CreditLot.objects.filter(account_id=account_id, remaining_nanos__gt=0,
                                    expires_at__gt=now).aggregate(
        total=Coalesce(Sum("remaining_nanos"), 0))["total"]


def hold_release(*, hold_id, now: datetime | None = None) -> dict:
    """The run did not happen: nothing is charged and the slot is freed. Idempotent."""
    now = now or timezone.now()
    hold_uuid = _hold_uuid(hold_id)
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
    return {"hold_id": str(hold.id), "status": Hold.Status.RELEASED, "charged_usd": "0"}


def hold_heartbeat(*, hold_id, now: datetime | None = None) -> dict:
    """Extend the lease of a long run. A hold whose lease already ran out stays expired."""
    now = now or timezone.now()
    hold_uuid = _hold_uuid(hold_id)
    lease_expires_at = now + settings.HOLD_LEASE
    updated = Hold.objects.filter(id=hold_uuid, status=Hold.Status.OPEN,
                                  lease_expires_at__gt=now).update(
        lease_expires_at=lease_expires_at)
    if not updated:
        hold = _hold_get(hold_uuid)
        status = Hold.Status.EXPIRED if hold.status == Hold.Status.OPEN else hold.status
        raise HoldClosed(extra={"hold_status": status})
    return {"hold_id": str(hold_uuid), "lease_expires_at": lease_expires_at}
