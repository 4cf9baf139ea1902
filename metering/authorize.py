"""Authorize: may this key run this model now? If so, reserve the money and the slots as a
hold (TigerBeetle's pending transfer).

Authorize is TigerBeetle's pending transfer: one conditional statement reserves money and
slots and inserts the hold (metering/sql.py). Only when it refuses does the slow path run:
lock the account, bring it up to date (record expired credit, recompute a stale tier,
expire lapsed holds), then try the same statement again or name the reason.

Authorizes that arrive while another is in flight share one statement and one commit
(metering/group_commit.py); each is still decided alone, by the same rules.
"""

import secrets
import time
import uuid
from dataclasses import dataclass, replace
from datetime import datetime
from decimal import Decimal
from uuid import UUID

from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.db.models import BooleanField, Exists, ExpressionWrapper
from django.utils import timezone

from accounts.locks import account_lock
from accounts.models import Account, ApiKey
from accounts.services import InvalidApiKey, api_key_touch
from billing.errors import InsufficientCredit
from config.api import ApplicationError
from config.money import nanos_to_usd
from metering import group_commit, sql
from metering.auto_scale import auto_scale_purchase
from metering.catalog import (
    KeyRef,
    ModelNotFound,
    ModelPrice,
    Policy,
    account_plan_code,
    api_key_ref,
    api_key_ref_forget,
    model_price,
    plan_closed_rps,
    pricing_policy,
)
from metering.holds import account_bring_current_locked
from metering.models import Hold, InferenceModel
from metering.pricing import (
    billed_seconds_for,
    closed_charge_from_cost,
    open_charge,
)
from metering.units import UnitEstimate, closed_usage_cost
from ratelimits.errors import AccountSuspended, ConcurrencyLimit
from ratelimits.key_limits import (
    KeyLimit,
    key_limit_refusal,
    key_spent_nanos,
    period_start,
)
from ratelimits.request_rate import closed_model_request_count
from ratelimits.slots import slots_refusal
from ratelimits.tiers import model_size_refusal


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

    @property
    def key_limit(self) -> KeyLimit | None:
        if self.key.spend_limit_nanos is None:
            return None
        return KeyLimit(limit_nanos=self.key.spend_limit_nanos,
                        period=self.key.spend_limit_period)


def _reservation_price(*, model: ModelPrice, policy: Policy, byok: bool,
                       estimate_seconds: Decimal | None, estimate_input_tokens: int | None,
                       estimate_max_output_tokens: int | None,
                       estimate_images: int | None = None,
                       estimate_requests: int | None = None) -> int:
    # A run that is not BYOK always reserves something (an estimate of zero reserves one
    # second, or one nano-dollar), so an account with nothing available gets its 402.
    if model.kind == InferenceModel.Kind.OPEN:
        seconds = policy.default_estimate_seconds if estimate_seconds is None \
            else estimate_seconds
        return open_charge(billed_seconds=max(1, billed_seconds_for(Decimal(seconds))),
                           nanos_per_second=model.nanos_per_second)
    if byok:
        return policy.byok_fee_nanos
    estimate = UnitEstimate(seconds=estimate_seconds, input_tokens=estimate_input_tokens,
                            max_output_tokens=estimate_max_output_tokens,
                            images=estimate_images, requests=estimate_requests)
    cost = closed_usage_cost(model=model, policy=policy, estimate=estimate)
    return max(1, closed_charge_from_cost(provider_cost=cost,
                                          fee_ppm=policy.platform_fee_ppm).total_nanos)


def _reserve_params(*, reservation: Reservation, hold_id: UUID, now: datetime,
                    lease_expires_at: datetime) -> dict:
    model, policy = reservation.model, reservation.policy
    params = {
        "hold_id": sql.db_uuid(hold_id), "account_id": sql.db_uuid(reservation.key.account_id),
        "key_id": sql.db_uuid(reservation.key.key_id), "model_id": model.id,
        "request_id": reservation.request_id, "kind": model.kind, "byok": reservation.byok,
        "reserve": reservation.reserve_nanos, "weight": reservation.weight,
        "class_params_b": model.class_params_b, "nanos_per_second": model.nanos_per_second,
        "input_nanos_per_mtok": model.input_nanos_per_mtok,
        "output_nanos_per_mtok": model.output_nanos_per_mtok,
        "nanos_per_image": model.nanos_per_image, "nanos_per_request": model.nanos_per_request,
        "platform_fee_ppm": policy.platform_fee_ppm if model.kind == "closed" else 0,
        "byok_fee_nanos": policy.byok_fee_nanos if reservation.byok else 0,
        "now": sql.db_datetime(now), "lease_expires_at": sql.db_datetime(lease_expires_at),
    }
    if model.kind == InferenceModel.Kind.CLOSED:
        params["nanos_per_second"] = model.nanos_per_unit_second
    limit = reservation.key_limit
    params["spend_limit"] = None if limit is None else limit.limit_nanos
    if limit is not None:
        params["spend_period"] = limit.period
        params["spend_period_start"] = sql.db_datetime(
            period_start(period=limit.period, now=now))
    return params


def hold_id_new() -> UUID:
    """A time-ordered UUID (version 7, RFC 9562: milliseconds since the epoch, then 74
    random bits). Holds and usage records are keyed by it: new keys land at the end of
    their indexes instead of on a random page of a table of millions of runs, so an
    authorize or settle touches the same few index pages however large the tables grow."""
    value = (time.time_ns() // 1_000_000) << 80 | int.from_bytes(secrets.token_bytes(10))
    value = value & ~(0xF << 76) | 0x7 << 76   # version 7
    value = value & ~(0x3 << 62) | 0x2 << 62   # the RFC variant
    return uuid.UUID(int=value)


def _try_reserve(*, reservation: Reservation, now: datetime) -> Authorization | None:
    hold_id = hold_id_new()
    lease_expires_at = now + settings.HOLD_LEASE
    # In a batch with other requests' when some are in flight (metering/group_commit.py).
    row = group_commit.authorize_reserve(_reserve_params(
        reservation=reservation, hold_id=hold_id, now=now, lease_expires_at=lease_expires_at))
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


def _refusal(*, account: Account, reservation: Reservation,
             now: datetime) -> ApplicationError | None:
    """Why the locked, current account cannot take this reservation, in the contract's
    order. This is the fast path's statement (metering/sql.py, RESERVE_SQL) in Python."""
    if account.status != Account.Status.ACTIVE:
        return AccountSuspended(extra={"reason": account.status_reason}
                                if account.status_reason else None)
    model = reservation.model
    refusal = (model_size_refusal(account=account, size_class=model.size_class,
                                  class_params_b=model.class_params_b)
               or slots_refusal(account=account, weight=reservation.weight))
    if refusal is not None:
        return refusal
    limit = reservation.key_limit
    if limit is not None:
        refusal = key_limit_refusal(
            limit=limit, reserve_nanos=reservation.reserve_nanos, now=now,
            spent_nanos=key_spent_nanos(key_id=reservation.key.key_id,
                                        period_start_at=period_start(period=limit.period,
                                                                     now=now)))
        if refusal is not None:
            return refusal
    if account.balance_nanos - account.held_nanos < reservation.reserve_nanos:
        return InsufficientCredit(extra={
            "reserve_usd": nanos_to_usd(reservation.reserve_nanos),
            "available_usd": nanos_to_usd(max(0, account.balance_nanos - account.held_nanos)),
        })
    return None


def _with_current_key_limit(*, reservation: Reservation) -> Reservation:
    """The reservation with the key's limit as it is now (read under the account lock,
    which a change of the limit takes too)."""
    limit_nanos, period = ApiKey.objects.filter(id=reservation.key.key_id).values_list(
        "spend_limit_nanos", "spend_limit_period").get()
    key = reservation.key
    if (limit_nanos, period) == (key.spend_limit_nanos, key.spend_limit_period):
        return reservation
    api_key_ref_forget(key)
    return replace(reservation, key=replace(key, spend_limit_nanos=limit_nanos,
                                            spend_limit_period=period))


def _api_key_usable(*, key_id: UUID, now: datetime) -> bool:
    return ApiKey.objects.filter(ApiKey.usable_at(now), id=key_id).exists()


def _authorize_slow(*, reservation: Reservation, now: datetime) -> Authorization:
    with transaction.atomic():
        account = account_lock(account_id=reservation.key.account_id)
        if not _api_key_usable(key_id=reservation.key.key_id, now=now):
            # Revoked: refused from the next call on, a retried request_id included.
            refusal = InvalidApiKey()
        else:
            account_bring_current_locked(account=account, now=now)
            reservation = _with_current_key_limit(reservation=reservation)
            existing = Hold.objects.filter(account=account,
                                           request_id=reservation.request_id).first()
            if existing is not None:
                if account.status != Account.Status.ACTIVE:
                    refusal = _refusal(account=account, reservation=reservation, now=now)
                else:
                    return _replay(hold=existing, account=account)
            else:
                refusal = _refusal(account=account, reservation=reservation, now=now)
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


def _closed_rate_limit(*, reservation: Reservation, now: datetime) -> None:
    """The plan's closed-model request rate (ratelimits/request_rate.py), counted only
    for a usable key and a request not seen before."""
    rps = plan_closed_rps(account_plan_code(reservation.key.account_id))
    if not rps:
        return
    key = reservation.key
    usable, retried = ApiKey.objects.filter(id=key.key_id).values_list(
        ExpressionWrapper(ApiKey.usable_at(now), output_field=BooleanField()),
        Exists(Hold.objects.filter(account_id=key.account_id,
                                   request_id=reservation.request_id)),
    ).first() or (False, False)
    if not usable:
        raise InvalidApiKey()  # a revoked key must not use up the account's requests
    if retried:
        return  # a retry of a request already counted; the slow path answers it
    closed_model_request_count(account_id=key.account_id, requests_per_second=rps)


def hold_authorize(*, api_key: str, model_id: str, request_id: str, byok: bool = False,
                   auto_scale: bool = False, estimate_seconds: Decimal | None = None,
                   estimate_input_tokens: int | None = None,
                   estimate_max_output_tokens: int | None = None,
                   estimate_images: int | None = None, estimate_requests: int | None = None,
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
            estimate_max_output_tokens=estimate_max_output_tokens,
            estimate_images=estimate_images, estimate_requests=estimate_requests))
    if model.kind == InferenceModel.Kind.CLOSED and not byok:
        _closed_rate_limit(reservation=reservation, now=now)
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
        if not auto_scale or not auto_scale_purchase(account_id=key.account_id, now=now):
            raise
    return _authorize_slow(reservation=reservation, now=timezone.now())
