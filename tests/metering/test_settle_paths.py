"""Settle has two writers: one PostgreSQL statement (the fast path) and the portable ORM
path used on other databases. The same scenario through each, on PostgreSQL, must leave
identical lots, ledger legs, account state, holds, usage records and low-balance events."""

from datetime import timedelta
from decimal import Decimal

import pytest

from accounts.models import Account
from billing.credit import credit_grant, purchase_record
from billing.models import (
    CreditLot,
    LedgerEntry,
    LedgerTransaction,
    LowBalanceEvent,
    Purchase,
)
from config.money import nanos_to_usd
from metering import settle, sql
from metering.apis import settlement_output
from metering.authorize import hold_authorize
from metering.holds import holds_expire
from metering.models import Hold, UsageRecord
from metering.settle import Usage, hold_settle
from tests.runpath import (
    MODEL_7B,
    MODEL_CLOSED,
    USD,
    customer_create,
    utc,
)

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("catalog")]

T0 = utc(2030, 9, 2, 8, 0, 0)
HOUR = timedelta(hours=1)


def scenario(settle) -> tuple[object, dict]:
    """Runs every kind of settle on a fresh account; `settle` is hold_settle, called
    through one writer or the other. Returns the account id and the settle results by
    request id."""
    customer = customer_create(now=T0 - timedelta(days=1))  # $1 free, to T0 + 27 days
    purchase_record(account_id=customer.account_id, amount_nanos=25 * USD, reference="INV-1",
                    kind=Purchase.Kind.INVOICE, now=T0 - 12 * HOUR)
    # Promotional lots that expire soon, each at its own time (spending order is known):
    # the first is partly spent before it expires, the second expires unspent, the third
    # is spent from after the others expired.
    for amount, expires in ((500_000_000, T0 + 2 * HOUR),
                            (60_000_000, T0 + 150 * timedelta(minutes=1)),
                            (250_000_000, T0 + 5 * HOUR)):
        credit_grant(account_id=customer.account_id, amount_nanos=amount, reason="promo",
                     now=T0 - HOUR, expires_at=expires)
    # Auto-reload on at $3: the settle that goes over the credit crosses it.
    Account.objects.filter(id=customer.account_id).update(
        auto_reload_threshold_nanos=3 * USD)

    def authorize(request_id, model=MODEL_7B, **options):
        return hold_authorize(api_key=customer.key, model_id=model,
                                       request_id=request_id, now=T0, **options).hold_id

    holds = {name: authorize(name, estimate_seconds=60)
             for name in ("hour", "zero", "lapsed", "swept", "late", "over")}
    for name in ("cost", "tokens"):
        holds[name] = authorize(name, MODEL_CLOSED)
    holds["byok"] = authorize("byok", MODEL_CLOSED, byok=True)
    results = {}

    def run(name, now, **usage):
        results[name] = settlement_output(settle(hold_id=holds[name], usage=Usage(**usage),
                                                  now=now))

    run("hour", T0 + timedelta(seconds=60), inference_seconds=Decimal(3600),
        load_seconds=Decimal(40))  # $0.2592
    run("cost", T0 + timedelta(seconds=70), provider_cost_nanos=200_000_000)  # $0.204
    run("tokens", T0 + timedelta(seconds=80), input_tokens=1234, output_tokens=567)
    run("zero", T0 + timedelta(seconds=90), inference_seconds=Decimal(0),
        load_seconds=Decimal("12.5"))
    run("byok", T0 + timedelta(seconds=95), input_tokens=10, output_tokens=10)
    # Settling a settled hold again returns the first result, whichever writer wrote it.
    results["hour-replayed"] = settlement_output(settle(
        hold_id=holds["hour"], now=T0 + HOUR, usage=Usage(inference_seconds=Decimal(9999))))
    # Lease lapsed, no sweep yet: it still holds money and a slot, which the settle frees.
    run("lapsed", T0 + HOUR, inference_seconds=Decimal("12.01"))
    # Lease lapsed and swept: the sweep freed its money and slot already.
    holds_expire(account_id=customer.account_id, now=T0 + HOUR)
    # After two promo lots expired, unrecorded: only live credit may pay.
    run("swept", T0 + 3 * HOUR, inference_seconds=Decimal(600))
    # 23 hours after its lease, and then one run that costs more than all the credit.
    run("late", T0 + 23 * HOUR, inference_seconds=Decimal(120))
    run("over", T0 + 23 * HOUR + timedelta(seconds=1), inference_seconds=Decimal(500_000))
    return customer.account_id, {name: {**result, "hold_id": None}
                                 for name, result in results.items()}


def state_of(account_id) -> dict:
    """Everything the settles wrote for the account, with ids replaced by positions."""
    lots = list(CreditLot.objects.filter(account_id=account_id).order_by("expires_at", "id"))
    lot_index = {lot.id: i for i, lot in enumerate(lots)}
    holds = {hold.id: hold.request_id for hold in Hold.objects.filter(account_id=account_id)}
    transactions = []
    for txn in LedgerTransaction.objects.filter(account_id=account_id).order_by("id"):
        legs = sorted((entry.book, entry.amount_nanos, lot_index.get(entry.lot_id),
                       entry.account_id == account_id)
                      for entry in LedgerEntry.objects.filter(transaction=txn))
        transactions.append((txn.kind, txn.memo, txn.created_at, legs))
    return {
        "account": Account.objects.filter(id=account_id).values(
            "balance_nanos", "held_nanos", "slots_in_use", "receivable_nanos",
            "credit_valid_until", "tier_id", "purchased_window_nanos").get(),
        "lots": [(lot.source, lot.amount_nanos, lot.remaining_nanos, lot.expires_at,
                  lot.expired_at) for lot in lots],
        "ledger": transactions,
        "holds": sorted(
            (hold.request_id, hold.status, hold.reserved_nanos, hold.weight,
             hold.charged_nanos, hold.closed_at, hold.billed_seconds, hold.unpaid_nanos,
             hold.balance_after_nanos, hold.available_after_nanos)
            for hold in Hold.objects.filter(account_id=account_id)),
        "usage": sorted(
            (holds[record.hold_id], record.model_id, record.kind, record.byok,
             record.inference_seconds, record.load_seconds, record.billed_seconds,
             record.input_tokens, record.output_tokens, record.provider_cost_nanos,
             record.charged_nanos, record.unpaid_nanos, record.created_at,
             record.api_key_id is not None)
            for record in UsageRecord.objects.filter(account_id=account_id)),
        "low_balance_events": sorted(
            (event.threshold_nanos, event.balance_before_nanos, event.balance_after_nanos,
             event.created_at)
            for event in LowBalanceEvent.objects.filter(account_id=account_id)),
    }


def test_the_postgresql_and_portable_settle_writers_have_identical_effects(monkeypatch):
    # Given the scenario run once through the PostgreSQL statement.
    assert sql.is_postgresql()
    fast_account, fast_results = scenario(hold_settle)

    # When it is run again with settle taking the portable ORM path.
    def portable_settle(**kwargs):
        with monkeypatch.context() as patched:
            patched.setattr(sql, "is_postgresql", lambda: False)
            patched.setattr(settle, "_hold_settle_postgresql", None)  # must not run
            return hold_settle(**kwargs)

    portable_account, portable_results = scenario(portable_settle)

    # Then the two runs answered and wrote exactly the same.
    assert portable_results == fast_results
    fast, portable = state_of(fast_account), state_of(portable_account)
    for part in fast:
        assert portable[part] == fast[part], part

    # And the scenario did reach every branch worth comparing.
    assert fast_results["hour"]["charged_usd"] == "0.259200000"
    assert fast_results["hour-replayed"] == fast_results["hour"]
    assert fast_results["cost"]["charged_usd"] == "0.204000000"
    assert fast_results["tokens"]["charged_usd"] == "0.008930100"
    assert fast_results["zero"]["charged_usd"] == fast_results["byok"]["charged_usd"] \
        == "0.000000000"
    assert [kind for kind, *_ in fast["ledger"]].count("usage") == 7  # not the zero ones
    # The promo lots, by expiry: the first partly spent, the second untouched, both
    # expired unrecorded; the third spent by the settles after the others expired.
    promo = [lot[2] for lot in fast["lots"] if lot[0] == "staff_grant"]
    assert promo == [500_000_000 - 259_200_000 - 204_000_000 - 8_930_100 - 13 * 72_000,
                     60_000_000, 250_000_000 - 600 * 72_000]
    # The third expired too before the late settle, which the free lot paid; the last
    # settle took all live credit and left the rest owed.
    over = 500_000 * 72_000
    live_before_over = (USD - 120 * 72_000) + 25 * USD
    assert fast_results["over"]["unpaid_usd"] == nanos_to_usd(over - live_before_over)
    assert fast["account"]["receivable_nanos"] == over - live_before_over
    assert fast["account"]["balance_nanos"] == sum(promo)  # expired, not yet recorded
    assert fast_results["over"]["balance_usd"] == "0.000000000"
    assert (fast["account"]["held_nanos"], fast["account"]["slots_in_use"]) == (0, 0)
    assert len(fast["low_balance_events"]) == 1
