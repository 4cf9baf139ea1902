"""Settle: charge what a run used, free its slots; the hold's first answer is kept."""

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from fractions import Fraction
from functools import partial
from uuid import UUID

from django.conf import settings
from django.db import transaction
from django.db.models import F, Sum
from django.db.models.functions import Coalesce
from django.utils import timezone

from accounts.locks import account_lock
from accounts.models import Account, ApiKey
from billing.credit import account_balance_apply, credit_consume
from billing.ledger import Book, Leg, ledger_post
from billing.ledger import Kind as LedgerKind
from billing.low_balance import low_balance_event_dispatch, low_balance_record
from billing.models import CreditLot
from metering import group_commit, sql
from metering.errors import HoldClosed, HoldNotFound, UsageMismatch
from metering.holds import hold_id_parse
from metering.models import Hold, InferenceModel, UsageRecord
from metering.pricing import (
    billed_seconds_for,
    closed_charge_from_cost,
    open_charge,
    token_cost,
    unit_cost,
)
from metering.units import UsageKindsMixed, unit_not_priced, usage_kinds_refusal
from ratelimits.key_limit_notices import key_spend_notices_record
from ratelimits.key_limits import key_spend_move, key_spent_nanos


@dataclass(frozen=True, slots=True)
class Usage:
    """What the gateway reports after a run."""

    inference_seconds: Decimal | None = None
    load_seconds: Decimal | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    provider_cost_nanos: int | None = None
    # Closed models priced per unit (metering/units.py).
    images: int | None = None
    seconds: Decimal | None = None
    requests: int | None = None

    def kinds_refusal(self) -> UsageKindsMixed | None:
        """A report of more than one kind of usage is refused, whatever the model."""
        present = {name for name in ("inference_seconds", "load_seconds", "input_tokens",
                                     "output_tokens", "images", "seconds", "requests")
                   if getattr(self, name) is not None}
        if self.provider_cost_nanos is not None:
            present.add("provider_cost_usd")
        return usage_kinds_refusal(present=present)


@dataclass(frozen=True, slots=True)
class Charge:
    total_nanos: int
    billed_seconds: int | None
    provider_cost_nanos: int | None
    revenue: tuple[Leg, ...]  # where the money goes (one or two legs)
    unit: str = ""
    units: Decimal | None = None


def _needs_seconds() -> UsageMismatch:
    return UsageMismatch(extra={"fields": {"inference_seconds": [
        "Required to settle an open-model run."]}})


def _needs_cost() -> UsageMismatch:
    return UsageMismatch(extra={"fields": {"provider_cost_usd": [
        "Send input_tokens and output_tokens, images, seconds, requests, or "
        "provider_cost_usd."]}})


# The settle on PostgreSQL names the unit it has no price for in its outcome.
NO_PRICE_OUTCOMES = {"no_price_tokens": ("tokens", "input_tokens"),
                     "no_price_images": ("images", "images"),
                     "no_price_seconds": ("seconds", "seconds"),
                     "no_price_requests": ("requests", "requests")}


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
    unit, units = "", None
    unit_prices = {"images": hold.nanos_per_image, "seconds": hold.nanos_per_second,
                   "requests": hold.nanos_per_request}
    if usage.provider_cost_nanos is not None:
        cost = Fraction(usage.provider_cost_nanos)
    elif usage.input_tokens is not None and usage.output_tokens is not None:
        if hold.input_nanos_per_mtok is None:
            raise unit_not_priced(unit="tokens", field="input_tokens")
        cost = token_cost(input_tokens=usage.input_tokens, output_tokens=usage.output_tokens,
                          input_nanos_per_mtok=hold.input_nanos_per_mtok,
                          output_nanos_per_mtok=hold.output_nanos_per_mtok)
    else:
        unit = next((name for name in unit_prices if getattr(usage, name) is not None), "")
        if not unit:
            raise _needs_cost()
        if unit_prices[unit] is None:
            raise unit_not_priced(unit=unit, field=unit)
        units = Decimal(getattr(usage, unit))
        cost = unit_cost(units=units, nanos_per_unit=unit_prices[unit])
    charge = closed_charge_from_cost(provider_cost=cost, fee_ppm=hold.platform_fee_ppm)
    return Charge(charge.total_nanos, None, charge.provider_cost_nanos,
                  (Leg(Book.PROVIDER_PASSTHROUGH, charge.provider_cost_nanos, account_id),
                   Leg(Book.PLATFORM_FEE, charge.fee_nanos, account_id)), unit, units)


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


def hold_settle(*, hold_id, usage: Usage, now: datetime | None = None) -> Settlement:
    """Charge the run's actual usage (possibly more or less than reserved), free its slot,
    consume credit soonest-expiring first and record the usage. Settling again returns the
    first result and charges nothing more."""
    now = now or timezone.now()
    hold_uuid = hold_id_parse(hold_id)
    refusal = usage.kinds_refusal()
    if refusal is not None:
        raise refusal
    if sql.is_postgresql():
        return _hold_settle_postgresql(hold_id=hold_uuid, usage=usage, now=now)
    return _hold_settle_portable(hold_id=hold_uuid, usage=usage, now=now)


def _hold_settle_postgresql(*, hold_id: UUID, usage: Usage, now: datetime) -> Settlement:
    """One statement: the database function metering_settle locks the account, decides,
    prices and writes (metering/settle_sql.py holds it)."""
    unit = next((name for name in ("images", "seconds", "requests")
                 if getattr(usage, name) is not None), None)
    (outcome, hold_status, charged, billed_seconds, unpaid, balance_after, available_after,
     low_balance_event_id, key_id, spend_period_start, key_spent, key_limit) = \
        group_commit.settle_postgresql(  # in a batch when others are in flight
            hold_id=hold_id, now=now, late_window=settings.LATE_SETTLE_WINDOW,
            inference_seconds=usage.inference_seconds, load_seconds=usage.load_seconds,
            input_tokens=usage.input_tokens, output_tokens=usage.output_tokens,
            provider_cost_nanos=usage.provider_cost_nanos, unit=unit,
            units=None if unit is None else Decimal(getattr(usage, unit)))
    if outcome in NO_PRICE_OUTCOMES:
        unit_name, field = NO_PRICE_OUTCOMES[outcome]
        raise unit_not_priced(unit=unit_name, field=field)
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
    if key_limit is not None and key_spent is not None:
        key_spend_notices_record(key_id=key_id, period_start_at=spend_period_start,
                                 spent_nanos=key_spent, limit_nanos=key_limit, now=now)
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
    # The key's spend: the charge replaces the reservation, in the authorize's period.
    key_spend_move(key_id=hold.api_key_id, period_start_at=hold.spend_period_start,
                   delta_nanos=charge.total_nanos - release_held)
    balance_before = account.balance_nanos
    account_balance_apply(account=account, balance_delta=-consumed.covered_nanos,
                          receivable_delta=consumed.shortfall_nanos)
    UsageRecord.objects.create(
        hold=hold, account_id=hold.account_id, api_key_id=hold.api_key_id,
        model_id=hold.model_id, kind=hold.kind, byok=hold.byok,
        inference_seconds=usage.inference_seconds, load_seconds=usage.load_seconds,
        billed_seconds=charge.billed_seconds, input_tokens=usage.input_tokens,
        output_tokens=usage.output_tokens, provider_cost_nanos=charge.provider_cost_nanos,
        unit=charge.unit, units=charge.units,
        charged_nanos=charge.total_nanos, unpaid_nanos=consumed.shortfall_nanos,
        created_at=now)
    # The crossing is recorded here, and auto-reload told once this transaction commits.
    low_balance_record(account=account, balance_before_nanos=balance_before, now=now)
    if hold.spend_period_start is not None:
        limit = ApiKey.objects.filter(id=hold.api_key_id).values_list(
            "spend_limit_nanos", flat=True).get()
        if limit is not None:
            key_spend_notices_record(
                key_id=hold.api_key_id, period_start_at=hold.spend_period_start,
                spent_nanos=key_spent_nanos(key_id=hold.api_key_id,
                                            period_start_at=hold.spend_period_start),
                limit_nanos=limit, now=now)
    return settlement


def _live_credit(*, account_id: UUID, now: datetime) -> int:
    """Credit that has not expired, whether or not an expiry was recorded."""
    return CreditLot.objects.filter(account_id=account_id, remaining_nanos__gt=0,
                                    expires_at__gt=now).aggregate(
        total=Coalesce(Sum("remaining_nanos"), 0))["total"]


