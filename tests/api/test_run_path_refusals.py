"""Why a run is refused, through the HTTP API: tier, concurrency, request rate, a
suspended account, a revoked key. Every refusal names its reason and writes nothing."""

from datetime import timedelta

import pytest
import time_machine

from billing.credit import credit_grant
from metering.models import Hold
from tests.runpath import (
    MODEL_7B,
    MODEL_15B,
    MODEL_70B,
    MODEL_CLOSED_CHEAP,
    RATE_7B,
    USD,
    authorize_body,
    balance_set,
    customer_create,
    utc,
    world_snapshot,
)

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("catalog")]

T0 = utc(2030, 6, 3, 9, 0, 0)


def post_authorize(api, customer, model=MODEL_7B, **fields):
    return api.post("/internal/v1/authorize", authorize_body(customer, model, **fields),
                    format="json")


def assert_error(response, status, code):
    body = response.json()
    assert response.status_code == status, body
    assert (body["status"], body["code"]) == (status, code)
    assert body["error"] and body["message"]
    return body


# --- Tiers ----------------------------------------------------------------------------------


def test_a_purchase_unlocks_70b_at_once_and_its_ageing_out_locks_it_again(api):
    with time_machine.travel(T0, tick=False) as clock:
        # Given a new account (free plan, $1 of free credit, nothing purchased) and a key.
        account_id = api.post("/internal/v1/accounts", {"email": "tiers@example.com"},
                              format="json").json()["account_id"]
        key = api.post(f"/internal/v1/accounts/{account_id}/api-keys", {"name": "gw"},
                       format="json").json()["key"]

        def authorize_70b(request_id):
            return api.post("/internal/v1/authorize", {
                "api_key": key, "model": MODEL_70B, "request_id": request_id,
                "estimate": {"seconds": 10}}, format="json")

        # When it asks for a 70B run, it is refused, and told what unlocks it.
        before = world_snapshot(account_id)
        body = assert_error(authorize_70b("first"), 403, "model_size_locked")
        assert body["required_purchase_usd"].startswith("25")
        assert body["required_purchase_usd"] == "25.000000000"
        assert body["purchased_last_4_weeks_usd"] == "0.000000000"
        assert world_snapshot(account_id) == before

        # When it buys $25, the very next call is admitted.
        purchase = api.post(f"/internal/v1/accounts/{account_id}/purchases",
                            {"amount_usd": "25.00", "reference": "INV-25"}, format="json")
        assert purchase.status_code == 201
        admitted = authorize_70b("after-purchase")
        assert admitted.status_code == 200, admitted.json()
        assert admitted.json()["tier"] == {"name": "Tier 3", "max_params_b": 70,
                                           "concurrency": 10}
        api.post(f"/internal/v1/holds/{admitted.json()['hold_id']}/release", {},
                 format="json")

        # When, 27 days on, it has fresh (granted) credit, 70B still runs.
        clock.move_to(T0 + timedelta(days=27))
        grant = api.post(f"/internal/v1/accounts/{account_id}/grants",
                         {"amount_usd": "5.00", "reason": "support"}, format="json")
        assert grant.status_code == 201
        assert authorize_70b("day-27").status_code == 200

        # When the purchase is 28 days old, the next 70B run is refused again; a grant
        # does not count toward the tier. A 7B run still goes through on the grant.
        clock.move_to(T0 + timedelta(days=28))
        body = assert_error(authorize_70b("day-28"), 403, "model_size_locked")
        assert body["purchased_last_4_weeks_usd"] == "0.000000000"
        seven_b = api.post("/internal/v1/authorize", {
            "api_key": key, "model": MODEL_7B, "request_id": "7b-day-28"}, format="json")
        assert seven_b.status_code == 200
        assert seven_b.json()["tier"]["max_params_b"] == 7
        account = api.get(f"/internal/v1/accounts/{account_id}").json()
        assert account["tier"]["name"] == "Tier 0"
        assert account["purchased_last_4_weeks_usd"] == "0.000000000"


def test_a_tier_that_unlocks_35b_still_refuses_70b(api):
    customer = customer_create(purchased_usd=10)

    body = assert_error(post_authorize(api, customer, MODEL_70B), 403, "model_size_locked")

    assert body["required_purchase_usd"] == "25.000000000"
    assert body["purchased_last_4_weeks_usd"] == "10.000000000"
    assert post_authorize(api, customer, MODEL_15B).status_code == 200


# --- Concurrency ----------------------------------------------------------------------------


def test_all_slots_taken_is_429_concurrency_limit_with_retry_after(api):
    # Given a $10 tier (4 slots) running two 15B models (2 slots each).
    customer = customer_create(purchased_usd=10)
    for _ in range(2):
        assert post_authorize(api, customer, MODEL_15B).status_code == 200
    before = world_snapshot(customer.account_id)

    # When a 7B run asks for one more slot.
    response = post_authorize(api, customer, MODEL_7B)

    # Then it is refused with the limit, the slots in use, and when to retry.
    body = assert_error(response, 429, "concurrency_limit")
    assert (body["limit"], body["in_use"]) == (4, 4)
    assert int(response["Retry-After"]) >= 1
    assert world_snapshot(customer.account_id) == before


def test_a_released_slot_is_available_to_the_next_call(api):
    customer = customer_create()  # one slot
    first = post_authorize(api, customer).json()
    assert_error(post_authorize(api, customer), 429, "concurrency_limit")

    api.post(f"/internal/v1/holds/{first['hold_id']}/release", {}, format="json")

    assert post_authorize(api, customer).status_code == 200


def test_a_run_that_takes_no_slot_is_never_refused_for_concurrency(api):
    with time_machine.travel(T0, tick=False) as clock:
        # Given a $3 tier (4 slots) whose purchase ages out while 4 runs are going.
        customer = customer_create(purchased_usd=3)
        clock.move_to(T0 + timedelta(days=28) - timedelta(seconds=30))
        credit_grant(account_id=customer.account_id, amount_nanos=USD, reason="support")
        for _ in range(4):
            assert post_authorize(api, customer).status_code == 200
        clock.move_to(T0 + timedelta(days=28))

        # When an open run asks for a slot, it is refused: 4 in use, the new tier has 1.
        body = assert_error(post_authorize(api, customer), 429, "concurrency_limit")
        assert (body["limit"], body["in_use"]) == (1, 4)

        # When closed-model runs (with and without the customer's own key) ask, they are
        # admitted: they take no slot.
        for byok in (False, True):
            response = post_authorize(api, customer, MODEL_CLOSED_CHEAP, byok=byok)
            assert response.status_code == 200, response.json()
            assert response.json()["concurrency"] == {"in_use": 4, "limit": 1}


# --- Request rate (closed models on the free plan) -----------------------------------------


def test_the_free_plan_allows_ten_closed_requests_a_second(api):
    # Given a free account, and a clock frozen inside one second.
    with time_machine.travel(T0, tick=False) as clock:
        customer = customer_create()

        # When 12 closed-model runs are authorized in that second.
        responses = [post_authorize(api, customer, MODEL_CLOSED_CHEAP) for _ in range(12)]

        # Then 10 are admitted and the rest refused with Retry-After; no hold for them.
        assert [r.status_code for r in responses] == [200] * 10 + [429] * 2
        for response in responses[10:]:
            assert_error(response, 429, "rate_limited")
            assert int(response["Retry-After"]) >= 1
        assert Hold.objects.filter(account_id=customer.account_id).count() == 10

        # When BYOK runs come in the same second, none is limited.
        for _ in range(15):
            assert post_authorize(api, customer, MODEL_CLOSED_CHEAP,
                                  byok=True).status_code == 200

        # When the next second starts, closed runs are admitted again.
        clock.move_to(T0 + timedelta(seconds=1))
        assert post_authorize(api, customer, MODEL_CLOSED_CHEAP).status_code == 200


def test_a_pay_as_you_go_account_has_no_closed_request_limit(api):
    with time_machine.travel(T0, tick=False):
        customer = customer_create(plan="payg")

        statuses = {post_authorize(api, customer, MODEL_CLOSED_CHEAP).status_code
                    for _ in range(25)}

        assert statuses == {200}
        assert Hold.objects.filter(account_id=customer.account_id).count() == 25


def test_a_retried_closed_request_gets_its_hold_even_when_the_second_is_used_up(api):
    with time_machine.travel(T0, tick=False):
        # Given a free account that sent 9 closed-model requests in this second.
        customer = customer_create()
        first = post_authorize(api, customer, MODEL_CLOSED_CHEAP, request_id="first")
        assert first.status_code == 200, first.json()
        for i in range(8):
            assert post_authorize(api, customer, MODEL_CLOSED_CHEAP,
                                  request_id=f"run-{i}").status_code == 200

        # When the gateway retries the first request three times, they get its hold and
        # are not counted: the 10th new request is still admitted, the 11th is not.
        for _ in range(3):
            again = post_authorize(api, customer, MODEL_CLOSED_CHEAP, request_id="first")
            assert again.status_code == 200, again.json()
            assert again.json()["hold_id"] == first.json()["hold_id"]
        assert post_authorize(api, customer, MODEL_CLOSED_CHEAP,
                              request_id="tenth").status_code == 200
        assert_error(post_authorize(api, customer, MODEL_CLOSED_CHEAP, request_id="eleventh"),
                     429, "rate_limited")
        before = world_snapshot(customer.account_id)

        # When it retries the first request once the second's 10 are used up.
        again = post_authorize(api, customer, MODEL_CLOSED_CHEAP, request_id="first")

        # Then it still gets the same hold (200, not 429), and nothing new is written.
        assert again.status_code == 200, again.json()
        assert (again.json()["hold_id"], again.json()["reserved_usd"]) == (
            first.json()["hold_id"], first.json()["reserved_usd"])
        assert world_snapshot(customer.account_id) == before
        assert Hold.objects.filter(account_id=customer.account_id).count() == 10


def test_a_revoked_keys_closed_requests_do_not_use_up_the_accounts_rate(api):
    with time_machine.travel(T0, tick=False):
        # Given a free account with a revoked key and a valid one.
        customer = customer_create()
        other = api.post(f"/internal/v1/accounts/{customer.account_id}/api-keys",
                         {"name": "other"}, format="json").json()["key"]
        assert api.delete(f"/internal/v1/accounts/{customer.account_id}/api-keys/"
                          f"{customer.key_id}").status_code == 204
        before = world_snapshot(customer.account_id)

        # When the revoked key sends 12 closed-model requests in one second.
        for _ in range(12):
            assert_error(post_authorize(api, customer, MODEL_CLOSED_CHEAP), 401,
                         "invalid_api_key")
        assert world_snapshot(customer.account_id) == before

        # Then the valid key still has the account's 10 requests in that second.
        statuses = [api.post("/internal/v1/authorize", {
            "api_key": other, "model": MODEL_CLOSED_CHEAP, "request_id": f"other-{i}"},
            format="json").status_code for i in range(11)]
        assert statuses == [200] * 10 + [429]


# --- Suspended accounts, revoked keys -------------------------------------------------------


def test_a_suspended_account_is_refused_and_keeps_its_credit(api):
    customer = customer_create()
    api.patch(f"/internal/v1/accounts/{customer.account_id}",
              {"status": "suspended", "reason": "fraud review"}, format="json")
    before = world_snapshot(customer.account_id)

    body = assert_error(post_authorize(api, customer), 403, "account_suspended")

    assert body["reason"] == "fraud review"
    assert world_snapshot(customer.account_id) == before
    assert before["account"]["balance_nanos"] == 10**9

    # When staff reinstate it, it runs again.
    api.patch(f"/internal/v1/accounts/{customer.account_id}", {"status": "active"},
              format="json")
    assert post_authorize(api, customer).status_code == 200


def test_a_revoked_key_fails_from_the_next_call(api, anon_api):
    # Given a key that works, and a second key of the same account.
    customer = customer_create()
    other = api.post(f"/internal/v1/accounts/{customer.account_id}/api-keys",
                     {"name": "other"}, format="json").json()["key"]
    first = post_authorize(api, customer).json()
    api.post(f"/internal/v1/holds/{first['hold_id']}/release", {}, format="json")
    assert anon_api.get("/api/v1/credits", HTTP_AUTHORIZATION=customer.key).status_code == 200

    # When it is revoked.
    deleted = api.delete(f"/internal/v1/accounts/{customer.account_id}/api-keys/"
                         f"{customer.key_id}")
    assert deleted.status_code == 204
    before = world_snapshot(customer.account_id)

    # Then the next authorize and the next credits read with it are 401 invalid_api_key,
    # and nothing is written; the other key still works.
    assert_error(post_authorize(api, customer), 401, "invalid_api_key")
    assert_error(anon_api.get("/api/v1/credits", HTTP_AUTHORIZATION=customer.key), 401,
                 "invalid_api_key")
    assert world_snapshot(customer.account_id) == before
    response = api.post("/internal/v1/authorize", {
        "api_key": other, "model": MODEL_7B, "request_id": "other-key"}, format="json")
    assert response.status_code == 200


def revoke(api, customer) -> None:
    assert api.delete(f"/internal/v1/accounts/{customer.account_id}/api-keys/"
                      f"{customer.key_id}").status_code == 204


def suspend(api, customer) -> None:
    assert api.patch(f"/internal/v1/accounts/{customer.account_id}",
                     {"status": "suspended", "reason": "fraud review"},
                     format="json").status_code == 200


@pytest.mark.parametrize("model", [MODEL_7B, MODEL_CLOSED_CHEAP], ids=["open", "closed"])
@pytest.mark.parametrize(("change", "status", "code"), [
    (revoke, 401, "invalid_api_key"),
    (suspend, 403, "account_suspended"),
], ids=["revoked-key", "suspended-account"])
def test_a_retried_request_id_fails_after_the_key_is_revoked_or_the_account_suspended(
        api, model, change, status, code):
    # Given a run authorized (and retried once, answered with its hold).
    customer = customer_create()
    first = post_authorize(api, customer, model, request_id="same-run")
    assert first.status_code == 200, first.json()
    assert post_authorize(api, customer, model,
                          request_id="same-run").json()["hold_id"] == first.json()["hold_id"]

    # When the key is revoked, or the account suspended, and the gateway retries the run.
    change(api, customer)
    before = world_snapshot(customer.account_id)
    response = post_authorize(api, customer, model, request_id="same-run")

    # Then the retry is refused like any next call, not given the old hold; nothing is
    # written and the hold is left as it was.
    body = assert_error(response, status, code)
    assert "hold_id" not in body
    assert world_snapshot(customer.account_id) == before
    assert Hold.objects.get(account_id=customer.account_id).status == Hold.Status.OPEN


def test_unknown_keys_and_models_are_named(api):
    customer = customer_create()
    before = world_snapshot(customer.account_id)

    assert_error(api.post("/internal/v1/authorize", {
        "api_key": "bk_nope_" + "x" * 40, "model": MODEL_7B, "request_id": "r"},
        format="json"), 401, "invalid_api_key")
    assert_error(post_authorize(api, customer, "no/such-model"), 404, "model_not_found")
    assert world_snapshot(customer.account_id) == before


# --- The customer's credit ------------------------------------------------------------------


def test_the_customer_reads_its_credit_with_its_key(api, anon_api):
    customer = customer_create(purchased_usd=3)
    post_authorize(api, customer, estimate={"seconds": 1000})  # holds $0.072, one slot

    response = anon_api.get("/api/v1/credits", HTTP_AUTHORIZATION=f"Bearer {customer.key}")

    assert response.status_code == 200
    assert response.json() == {
        "balance_usd": "4.000000000", "available_usd": "3.928000000", "plan": "free",
        "tier": {"name": "Tier 1", "max_params_b": 7, "concurrency": 4},
        "concurrency": {"in_use": 1, "limit": 4},
        "auto_reload": {"enabled": False, "paused": False, "threshold_usd": "3.000000000",
                        "amount_usd": "10.000000000", "monthly_max_usd": "100.000000000"},
    }


@pytest.mark.parametrize(("model", "estimate", "reserve_usd"), [
    (MODEL_7B, {"seconds": 0}, "0.000072000"),
    (MODEL_CLOSED_CHEAP, {"input_tokens": 0, "max_output_tokens": 0}, "0.000000001"),
], ids=["open-zero-seconds", "closed-zero-tokens"])
def test_an_estimate_of_zero_still_needs_credit(api, model, estimate, reserve_usd):
    # Given an account with nothing available.
    customer = customer_create()
    balance_set(account_id=customer.account_id, balance_nanos=0)
    before = world_snapshot(customer.account_id)

    # When a run that estimates nothing is authorized (not BYOK).
    response = post_authorize(api, customer, model, estimate=estimate)

    # Then it is refused for credit, naming the smallest reservation; nothing is written.
    body = assert_error(response, 402, "insufficient_credits")
    assert (body["reserve_usd"], body["available_usd"]) == (reserve_usd, "0.000000000")
    assert world_snapshot(customer.account_id) == before
    assert not Hold.objects.filter(account_id=customer.account_id).exists()


@pytest.mark.parametrize(("model", "estimate", "reserved_nanos", "slots", "reserved_usd",
                          "available_usd"), [
    (MODEL_7B, {"seconds": 0}, RATE_7B, 1, "0.000072000", "0.999928000"),
    (MODEL_CLOSED_CHEAP, {"input_tokens": 0, "max_output_tokens": 0}, 1, 0, "0.000000001",
     "0.999999999"),
], ids=["open-zero-seconds", "closed-zero-tokens"])
def test_an_estimate_of_zero_reserves_the_smallest_billable_amount(
        api, model, estimate, reserved_nanos, slots, reserved_usd, available_usd):
    # Given an account with its $1 free credit.
    customer = customer_create()

    # When a run that estimates nothing is authorized.
    response = post_authorize(api, customer, model, estimate=estimate)

    # Then it reserves one second at the class rate (7B: $0.000072), or one nano-dollar.
    assert response.status_code == 200, response.json()
    body = response.json()
    assert (body["reserved_usd"], body["available_usd"]) == (reserved_usd, available_usd)
    hold = Hold.objects.get(id=body["hold_id"])
    assert (hold.reserved_nanos, hold.weight) == (reserved_nanos, slots)
    account = customer.account()
    assert (account.held_nanos, account.slots_in_use) == (reserved_nanos, slots)
