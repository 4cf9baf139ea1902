"""Exact prices through the HTTP API: authorize, then settle, and what the ledger says."""

import pytest

from billing.models import LedgerEntry, LedgerTransaction
from metering.apis import HoldAuthorizeApi, HoldHeartbeatApi, HoldReleaseApi, HoldSettleApi
from metering.catalog import catalog_caches_clear
from metering.models import Hold, PricingPolicy, UsageRecord
from tests.runpath import (
    MODEL_7B,
    MODEL_70B,
    MODEL_CLOSED,
    RATE_7B,
    USD,
    authorize_body,
    customer_create,
    open_holds,
)

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("catalog")]


def authorize(api, customer, model=MODEL_7B, **fields):
    response = api.post("/internal/v1/authorize", authorize_body(customer, model, **fields),
                        format="json")
    assert response.status_code == 200, response.json()
    return response.json()


def settle(api, hold_id, **usage):
    response = api.post(f"/internal/v1/holds/{hold_id}/settle", usage, format="json")
    assert response.status_code == 200, response.json()
    return response.json()


def usage_legs(account_id) -> dict:
    """The legs of the account's usage transactions, summed by book."""
    legs: dict = {}
    for book, amount in LedgerEntry.objects.filter(
            transaction__account_id=account_id,
            transaction__kind=LedgerTransaction.Kind.USAGE).values_list("book", "amount_nanos"):
        legs[book] = legs.get(book, 0) + amount
    return legs


def test_an_hour_on_a_7b_model_costs_0_2592(api):
    # Given a new account with its $1 free credit.
    customer = customer_create()

    # When it runs a 7B model for an hour (after a 45 s cold start).
    authorization = authorize(api, customer, estimate={"seconds": 3600})
    result = settle(api, authorization["hold_id"], inference_seconds=3600, load_seconds=45)

    # Then the hour is charged at $0.000072 a second, and nothing for the load time.
    assert authorization["reserved_usd"] == "0.259200000"
    assert result == {"hold_id": authorization["hold_id"], "status": "settled",
                      "charged_usd": "0.259200000", "billed_seconds": 3600,
                      "balance_usd": "0.740800000", "available_usd": "0.740800000",
                      "unpaid_usd": "0.000000000"}
    assert usage_legs(customer.account_id) == {"customer_credit": -259_200_000,
                                               "open_revenue": 259_200_000}
    record = UsageRecord.objects.get(hold_id=authorization["hold_id"])
    assert (record.billed_seconds, record.charged_nanos, record.load_seconds) == (
        3600, 259_200_000, 45)


def test_a_70b_run_of_12_01_seconds_bills_13_seconds(api):
    # Given an account that bought $25 (70B unlocked).
    customer = customer_create(purchased_usd=25)

    # When a 70B run reports 12.01 s of inference.
    authorization = authorize(api, customer, MODEL_70B, estimate={"seconds": 60})
    result = settle(api, authorization["hold_id"], inference_seconds=12.01, load_seconds=31.0)

    # Then 13 started seconds are billed at $0.000216.
    assert authorization["reserved_usd"] == "0.012960000"
    assert (result["billed_seconds"], result["charged_usd"]) == (13, "0.002808000")
    assert result["balance_usd"] == "25.997192000"
    assert usage_legs(customer.account_id) == {"customer_credit": -2_808_000,
                                               "open_revenue": 2_808_000}


def test_load_seconds_are_never_billed(api):
    customer = customer_create()

    # When one run used a fifth of a second after a 10-minute load, and another only loaded.
    short = authorize(api, customer)
    short_result = settle(api, short["hold_id"], inference_seconds=0.2, load_seconds=600)
    load_only = authorize(api, customer)
    load_only_result = settle(api, load_only["hold_id"], inference_seconds=0,
                              load_seconds=30)

    # Then the first is billed one second, the second nothing: no ledger transaction for
    # it, but its slot and reservation are freed and its usage is recorded.
    assert (short_result["billed_seconds"], short_result["charged_usd"]) == (1, "0.000072000")
    assert (load_only_result["billed_seconds"], load_only_result["charged_usd"]) == (
        0, "0.000000000")
    assert LedgerTransaction.objects.filter(account_id=customer.account_id,
                                            kind="usage").count() == 1
    assert UsageRecord.objects.get(hold_id=load_only["hold_id"]).load_seconds == 30
    account = customer.account()
    assert (account.held_nanos, account.slots_in_use) == (0, 0)
    assert account.balance_nanos == USD - RATE_7B


def test_usage_above_the_reservation_is_charged_in_full(api):
    customer = customer_create()
    authorization = authorize(api, customer, estimate={"seconds": 10})

    result = settle(api, authorization["hold_id"], inference_seconds=100)

    assert authorization["reserved_usd"] == "0.000720000"
    assert result["charged_usd"] == "0.007200000"
    assert customer.account().balance_nanos == USD - 100 * RATE_7B


def test_a_closed_run_is_charged_provider_cost_plus_two_percent(api):
    customer = customer_create()
    authorization = authorize(api, customer, MODEL_CLOSED,
                              estimate={"input_tokens": 1000, "max_output_tokens": 500})

    result = settle(api, authorization["hold_id"], provider_cost_usd="0.012300000")

    # $0.0025 + $0.005 estimated, plus 2%; then $0.0123 + $0.000246 charged.
    assert authorization["reserved_usd"] == "0.007650000"
    assert result["charged_usd"] == "0.012546000"
    assert result["billed_seconds"] is None
    assert usage_legs(customer.account_id) == {"customer_credit": -12_546_000,
                                               "provider_passthrough": 12_300_000,
                                               "platform_fee": 246_000}
    account = customer.account()
    assert (account.held_nanos, account.slots_in_use) == (0, 0)


def test_a_closed_run_by_tokens_is_priced_from_the_models_token_prices(api):
    customer = customer_create()
    authorization = authorize(api, customer, MODEL_CLOSED)

    result = settle(api, authorization["hold_id"], input_tokens=1200, output_tokens=350)

    # 1,200 x $2.50/M + 350 x $10/M = $0.0065, plus 2% = $0.00663. The default estimate
    # is 1,000 tokens each way: $0.0125 + 2%.
    assert authorization["reserved_usd"] == "0.012750000"
    assert result["charged_usd"] == "0.006630000"
    record = UsageRecord.objects.get(hold_id=authorization["hold_id"])
    assert (record.input_tokens, record.output_tokens, record.provider_cost_nanos) == (
        1200, 350, 6_500_000)


def test_a_closed_charge_is_rounded_once_half_up_to_the_nano_dollar(api):
    customer = customer_create()
    authorization = authorize(api, customer, MODEL_CLOSED)

    result = settle(api, authorization["hold_id"], provider_cost_usd="0.000000025")

    # 25 nanos x 1.02 = 25.5 nanos: 26, of which 25 passed through and 1 is the fee.
    assert result["charged_usd"] == "0.000000026"
    assert usage_legs(customer.account_id) == {"customer_credit": -26,
                                               "provider_passthrough": 25,
                                               "platform_fee": 1}


def test_byok_reserves_nothing_and_is_charged_the_byok_fee(api):
    # Given a new account; the BYOK fee is its default, zero.
    customer = customer_create()
    before = customer.account()

    # When a closed run with the customer's own provider key is authorized and settled.
    authorization = authorize(api, customer, MODEL_CLOSED, byok=True,
                              estimate={"input_tokens": 10**6, "max_output_tokens": 10**6})
    during = customer.account()
    result = settle(api, authorization["hold_id"], input_tokens=10**6, output_tokens=10**6)

    # Then nothing was reserved, no slot taken, nothing charged and no ledger written.
    assert authorization["reserved_usd"] == "0.000000000"
    assert (during.held_nanos, during.slots_in_use) == (0, 0)
    assert result["charged_usd"] == "0.000000000"
    after = customer.account()
    assert after.balance_nanos == before.balance_nanos
    assert not LedgerTransaction.objects.filter(account_id=customer.account_id,
                                                kind="usage").exists()
    assert UsageRecord.objects.get(hold_id=authorization["hold_id"]).byok is True

    # When staff set a BYOK fee of $0.001, the next BYOK run is charged exactly that.
    PricingPolicy.objects.filter(id=1).update(byok_fee_nanos=1_000_000)
    catalog_caches_clear()
    authorization = authorize(api, customer, MODEL_CLOSED, byok=True)
    result = settle(api, authorization["hold_id"], input_tokens=10**6, output_tokens=10**6)
    assert result["charged_usd"] == "0.001000000"
    assert usage_legs(customer.account_id) == {"customer_credit": -1_000_000,
                                               "byok_fee": 1_000_000}


def test_byok_on_an_open_model_is_an_ordinary_open_run(api):
    customer = customer_create()

    authorization = authorize(api, customer, MODEL_7B, byok=True, estimate={"seconds": 10})

    assert authorization["reserved_usd"] == "0.000720000"
    assert Hold.objects.get(id=authorization["hold_id"]).byok is False
    assert open_holds(customer.account_id) == {"n": 1, "held": 720_000, "slots": 1}


def test_authorize_answers_with_the_contracts_fields(api):
    customer = customer_create(purchased_usd=25)

    body = authorize(api, customer, MODEL_70B, estimate={"seconds": 100})

    assert set(body) == {"hold_id", "account_id", "reserved_usd", "lease_expires_at",
                         "balance_usd", "available_usd", "tier", "concurrency"}
    assert body["account_id"] == str(customer.account_id)
    assert body["reserved_usd"] == "0.021600000"
    assert (body["balance_usd"], body["available_usd"]) == ("26.000000000", "25.978400000")
    assert body["tier"] == {"name": "Tier 3", "max_params_b": 70, "concurrency": 10}
    assert body["concurrency"] == {"in_use": 3, "limit": 10}
    assert body["lease_expires_at"].endswith("Z")


def test_every_run_path_answer_is_what_its_documented_output_model_says(api):
    """The pydantic output models describe the run path's answers in the served schema:
    each answer has exactly their fields, of their types."""
    customer = customer_create()
    authorization = authorize(api, customer, estimate={"seconds": 10})
    beat = api.post(f"/internal/v1/holds/{authorization['hold_id']}/heartbeat", {},
                    format="json").json()
    settled = settle(api, authorization["hold_id"], inference_seconds=3)
    second = authorize(api, customer, request_id="second")
    released = api.post(f"/internal/v1/holds/{second['hold_id']}/release", {},
                        format="json").json()

    for answer, model in [(authorization, HoldAuthorizeApi.AuthorizeOutput),
                          (beat, HoldHeartbeatApi.HeartbeatOutput),
                          (settled, HoldSettleApi.SettleOutput),
                          (released, HoldReleaseApi.ReleaseOutput)]:
        assert set(answer) == set(model.model_fields), model.__name__
        model.model_validate(answer, strict=True)
