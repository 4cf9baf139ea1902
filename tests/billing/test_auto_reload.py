"""Auto-reload: one charge per crossing of the threshold, the monthly maximum, declines.

The concurrency test runs a real Celery worker in its own process (`celery -A config
worker`, thread pool) on the Redis broker and the test database: the task is consumed
the way production consumes it, with acks_late, while the test publishes the same task
again and again as a broker redelivering it would."""

import os
import subprocess
import sys
import threading
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import redis
import stripe
from django.conf import settings as django_settings
from django.db import connection

from accounts.models import Account
from billing.auto_reload import auto_reload_run, payment_resume
from billing.credit import credit_debit, credit_grant
from billing.models import BillingProfile, LowBalanceEvent, Payment, Purchase
from billing.stripe_gateway import StripeGateway, StripeUnavailable
from billing.tasks import auto_reload_for_crossing
from config.celery import app as celery_app
from tests.billing.conftest import (
    DECLINED_ON_CHARGE,
    GOOD_CARD,
    NEEDS_AUTHENTICATION,
    SECRET_KEY,
    WEBHOOK_SECRET,
    wait_until,
)

USD = 10**9
CENT = 10**7

pytestmark = pytest.mark.usefixtures("stripe_live")


def _customer_with_reload(make_customer, save_card, *, card=GOOD_CARD, buy="5.00",
                          **reload_settings):
    """A customer with a saved card, $1 of free credit plus `buy`, and auto-reload on."""
    customer = make_customer()
    assert save_card(customer, card).status_code == 201
    if buy:
        bought = customer.api.post("/api/v1/purchases", {"amount_usd": buy}, format="json")
        assert bought.status_code == 201, bought.content
    body = {"enabled": True, "threshold_usd": "3.00", "amount_usd": "10.00", **reload_settings}
    response = customer.api.put("/api/v1/auto-reload", body, format="json")
    assert response.status_code == 200, response.content
    return customer


def _stripe_charges(stripe_client, account) -> list[int]:
    customer_id = BillingProfile.objects.get(account=account).stripe_customer_id
    return sorted(c.amount for c in stripe_client.v1.charges.list(
        params={"customer": customer_id}).data)


def _cross(account, *, to_nanos: int, now=None) -> LowBalanceEvent:
    """Spend down to `to_nanos`; returns the crossing this made."""
    balance = Account.objects.get(id=account.id).balance_nanos
    credit_debit(account_id=account.id, amount_nanos=balance - to_nanos, reason="usage",
                 now=now)
    return LowBalanceEvent.objects.filter(account=account).order_by("-id").first()


# --- The real worker -----------------------------------------------------------------------


@pytest.fixture
def celery_worker_process(stripe_live, localstripe_url, tmp_path):
    db = connection.settings_dict
    database_url = (f"postgres://{db['USER']}:{db['PASSWORD'] or ''}@{db['HOST']}:"
                    f"{db['PORT']}/{db['NAME']}")
    celery_app.control.purge()  # tasks left on the broker by earlier tests
    name = f"reload-test-{uuid.uuid4().hex[:8]}@localhost"
    env = {**os.environ, "DATABASE_URL": database_url, "REDIS_URL": django_settings.REDIS_URL,
           "STRIPE_API_BASE": localstripe_url, "STRIPE_SECRET_KEY": SECRET_KEY,
           "STRIPE_WEBHOOK_SECRET": WEBHOOK_SECRET, "DATABASE_CONN_MAX_AGE": "0",
           "EMAIL_BACKEND": "django.core.mail.backends.locmem.EmailBackend"}
    log_path = tmp_path / "worker.log"
    celery = Path(sys.executable).with_name("celery")
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [str(celery), "-A", "config", "worker", "--pool", "threads", "--concurrency", "8",
             "--hostname", name, "--loglevel", "INFO", "--without-gossip", "--without-mingle"],
            cwd=django_settings.BASE_DIR, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: process.poll() is not None or celery_app.control.ping(
            destination=[name], timeout=0.5), timeout=60, message="the worker to start")
        assert process.poll() is None, log_path.read_text()
        process.name, process.log_path = name, log_path
        yield process
    finally:
        process.terminate()
        process.wait(timeout=30)


def _worker_idle(worker) -> bool:
    broker = redis.Redis.from_url(django_settings.REDIS_URL)
    if broker.llen("celery"):
        return False
    inspect = celery_app.control.inspect(destination=[worker.name], timeout=1)
    active, reserved = inspect.active() or {}, inspect.reserved() or {}
    return not any(active.values()) and not any(reserved.values())


@pytest.mark.figure(7, tried="50 concurrent low-balance crossings, the reload task delivered "
                    "again, a real Celery worker on localstripe", counts="1 charge at Stripe, "
                    "1 purchase, 1 lot")
@pytest.mark.slow
def test_fifty_concurrent_crossings_with_the_task_redelivered_make_exactly_one_charge(
        make_customer, save_card, stripe_client, celery_worker_process):
    # Given $6 of credit, auto-reload at $3 for $10, and a worker consuming reload tasks
    customer = _customer_with_reload(make_customer, save_card)
    account = customer.account
    assert Account.objects.get(id=account.id).balance_nanos == 6 * USD

    # When 50 runs are charged at the same time, on their own connections, 8 cents each,
    # taking the balance from $6 across the threshold to $2
    barrier = threading.Barrier(50)
    errors = []

    def run():
        try:
            barrier.wait()
            credit_debit(account_id=account.id, amount_nanos=8 * CENT, reason="run")
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=run) for _ in range(50)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    # and the broker delivers the reload task again and again while it runs
    [crossing] = LowBalanceEvent.objects.filter(account=account)
    for _ in range(10):
        auto_reload_for_crossing.delay(crossing.id)
    wait_until(lambda: Payment.objects.filter(
        account=account, purpose=Payment.Purpose.AUTO_RELOAD,
        status=Payment.Status.SUCCEEDED).exists(), timeout=60, message="the reload")
    for _ in range(5):
        auto_reload_for_crossing.delay(crossing.id)
    wait_until(lambda: _worker_idle(celery_worker_process), timeout=60,
               message="the worker to finish every copy of the task")

    # Then there was one crossing, one reload, one charge of $10 on the card
    assert LowBalanceEvent.objects.filter(account=account).count() == 1
    [reload] = Payment.objects.filter(account=account, purpose=Payment.Purpose.AUTO_RELOAD)
    assert reload.low_balance_event_id == crossing.id
    assert Purchase.objects.filter(account=account, kind=Purchase.Kind.AUTO_RELOAD).count() == 1
    assert _stripe_charges(stripe_client, account) == [500, 1000]
    assert Account.objects.get(id=account.id).balance_nanos == 12 * USD
    crossing.refresh_from_db()
    assert crossing.outcome == "reloaded 10.000000000 USD"


@pytest.mark.parametrize("monthly_max, third_reload_made", [
    ("30.01", True),   # the third reload brings the month to one cent under the maximum
    ("30.00", True),   # exactly to the maximum
    ("29.99", False),  # one cent over it
])
@pytest.mark.figure(7, tried="monthly maximum of $30.01, $30.00 and $29.99 with $10 "
                    "reloads", counts="third reload made at and under the maximum, refused "
                    "one cent over")
def test_the_monthly_maximum_is_exact(make_customer, save_card, stripe_client, monthly_max,
                                      third_reload_made):
    # Given auto-reload of $10 with a monthly maximum around $30
    customer = _customer_with_reload(make_customer, save_card, monthly_max_usd=monthly_max)
    account = customer.account

    # When the balance crosses the threshold three times, each answered by the reload task
    outcomes = []
    for _ in range(3):
        crossing = _cross(account, to_nanos=2 * USD)
        auto_reload_run(low_balance_event_id=crossing.id)
        crossing.refresh_from_db()
        outcomes.append(crossing.outcome)

    # Then two reloads are always made, and the third only within the maximum
    reloads = 3 if third_reload_made else 2
    assert Payment.objects.filter(account=account, purpose=Payment.Purpose.AUTO_RELOAD,
                                  status=Payment.Status.SUCCEEDED).count() == reloads
    assert _stripe_charges(stripe_client, account) == sorted([500] + [1000] * reloads)
    assert outcomes[:2] == ["reloaded 10.000000000 USD"] * 2
    if third_reload_made:
        assert outcomes[2] == "reloaded 10.000000000 USD"
    else:
        assert outcomes[2] == (f"no reload: monthly maximum reached (20.000000000 of "
                               f"{monthly_max}0000000 USD)")
        # reaching the maximum is not a failure: auto-reload stays on for next month
        assert Account.objects.get(id=account.id).auto_reload_threshold_nanos == 3 * USD


def test_the_monthly_maximum_restarts_with_the_utc_calendar_month(make_customer, save_card):
    customer = _customer_with_reload(make_customer, save_card, monthly_max_usd="10.00")
    account = customer.account
    month_start = datetime.now(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)

    made = []
    for when in (month_start - timedelta(microseconds=1), month_start,
                 month_start + timedelta(seconds=1)):
        crossing = _cross(account, to_nanos=2 * USD, now=when)
        made.append(auto_reload_run(low_balance_event_id=crossing.id, now=when) is not None)

    # The last second of the previous month, the first of this one, and then no more
    assert made == [True, True, False]


@pytest.mark.figure(7, tried="auto-reload on a card declined on every charge",
                    counts="no credit, no purchase, auto-reload paused, customer told")
def test_a_declined_reload_adds_nothing_pauses_and_tells_the_customer(
        make_customer, save_card, mailoutbox, localstripe_url):
    # Given auto-reload on a card that saves but is declined on every charge
    customer = make_customer()
    assert save_card(customer, DECLINED_ON_CHARGE).status_code == 201
    credit_grant(account_id=customer.id, amount_nanos=5 * USD, reason="support credit")
    response = customer.api.put("/api/v1/auto-reload", {"enabled": True}, format="json")
    assert response.status_code == 200 and response.data["threshold_usd"] == "3.000000000"
    assert Account.objects.get(id=customer.id).auto_reload_threshold_nanos == 3 * USD

    # When the balance crosses the threshold and the reload is attempted
    crossing = _cross(customer.account, to_nanos=2 * USD)
    payment = auto_reload_run(low_balance_event_id=crossing.id)

    # Then no credit is added, auto-reload is paused with the reason, and the customer told
    assert (payment.status, payment.failure_code) == ("failed", "card_declined")
    assert not Purchase.objects.filter(account=customer.account,
                                       kind=Purchase.Kind.AUTO_RELOAD).exists()
    account = Account.objects.get(id=customer.id)
    assert account.balance_nanos == 2 * USD
    assert account.auto_reload_threshold_nanos is None
    settings_now = customer.api.get("/api/v1/auto-reload").data
    assert settings_now["enabled"] is True and settings_now["paused"] is True
    assert settings_now["paused_reason"] == "card_declined: Your card was declined."
    crossing.refresh_from_db()
    assert crossing.outcome.startswith("reload failed (card_declined")
    [email] = mailoutbox
    assert email.to == [customer.account.user.email]
    assert email.subject == "Auto-reload failed: your card was not charged"
    assert "card_declined: Your card was declined." in email.body
    # and while paused, spending further records no new crossing
    credit_debit(account_id=customer.id, amount_nanos=1 * USD, reason="usage")
    assert LowBalanceEvent.objects.filter(account=customer.account).count() == 1

    # When the customer saves a good card and turns auto-reload back on, below the threshold
    good = save_card(customer, GOOD_CARD).data
    resumed = customer.api.put("/api/v1/auto-reload", {"enabled": True, "card_id": good["id"]},
                               format="json")

    # Then auto-reload resumes, and a reload starts at once for the balance already low
    assert resumed.status_code == 200 and resumed.data["paused"] is False
    latest = LowBalanceEvent.objects.filter(account=customer.account).latest("id")
    assert latest.id != crossing.id
    payment = auto_reload_run(low_balance_event_id=latest.id)
    assert payment.status == "succeeded"
    assert Account.objects.get(id=customer.id).balance_nanos == 11 * USD


def test_a_card_that_needs_authentication_pauses_auto_reload(make_customer, save_card,
                                                             stripe_client, mailoutbox):
    customer = make_customer()
    assert save_card(customer, NEEDS_AUTHENTICATION).status_code == 201
    credit_grant(account_id=customer.id, amount_nanos=5 * USD, reason="support credit")
    customer.api.put("/api/v1/auto-reload", {"enabled": True}, format="json")

    crossing = _cross(customer.account, to_nanos=2 * USD)
    payment = auto_reload_run(low_balance_event_id=crossing.id)

    assert (payment.status, payment.failure_code) == ("failed", "authentication_required")
    assert Account.objects.get(id=customer.id).auto_reload_threshold_nanos is None
    assert stripe_client.v1.payment_intents.retrieve(
        payment.stripe_payment_intent_id).status == "canceled"
    assert len(mailoutbox) == 1
    assert not Purchase.objects.filter(account=customer.account,
                                       kind=Purchase.Kind.AUTO_RELOAD).exists()


def test_a_rerun_while_the_reload_is_claimed_is_a_no_op_and_a_dead_claim_is_resumed(
        make_customer, save_card, stripe_client):
    # Given a reload decided (claimed) by a worker that died before it reached Stripe
    customer = _customer_with_reload(make_customer, save_card)
    crossing = _cross(customer.account, to_nanos=2 * USD)
    now = datetime.now(UTC)
    claimed = Payment.objects.create(
        account=customer.account, purpose=Payment.Purpose.AUTO_RELOAD, amount_nanos=10 * USD,
        card=BillingProfile.objects.get(account=customer.account).default_card,
        low_balance_event=crossing, idempotency_key=f"auto-reload:{crossing.id}",
        claimed_until=now + timedelta(minutes=2), created_at=now, updated_at=now)

    # When the task reruns while the claim holds, nothing is charged
    assert auto_reload_run(low_balance_event_id=crossing.id, now=now).status == "pending"
    assert _stripe_charges(stripe_client, customer.account) == [500]

    # When the claim has run out, the charge is made, once
    later = now + timedelta(minutes=3)
    assert payment_resume(payment_id=claimed.id, now=later).status == "succeeded"
    assert auto_reload_run(low_balance_event_id=crossing.id, now=later).status == "succeeded"
    assert _stripe_charges(stripe_client, customer.account) == [500, 1000]
    assert Purchase.objects.filter(account=customer.account,
                                   kind=Purchase.Kind.AUTO_RELOAD).count() == 1


def test_auto_reload_settings_are_validated_and_write_nothing_when_refused(make_customer):
    customer = make_customer()

    defaults = customer.api.get("/api/v1/auto-reload")
    no_card = customer.api.put("/api/v1/auto-reload", {"enabled": True}, format="json")
    too_small = customer.api.put("/api/v1/auto-reload", {"amount_usd": "4.99"}, format="json")
    max_below_amount = customer.api.put("/api/v1/auto-reload", {"monthly_max_usd": "9.99"},
                                        format="json")

    assert defaults.status_code == 200
    assert defaults.data == {
        "enabled": False, "paused": False, "paused_reason": "", "threshold_usd": "3.000000000",
        "amount_usd": "10.000000000", "monthly_max_usd": "100.000000000", "card_id": None,
        "charged_this_month_usd": "0.000000000"}
    assert (no_card.status_code, no_card.json()["code"]) == (400, "no_card")
    assert too_small.status_code == 400 and "amount_usd" in too_small.json()["fields"]
    assert max_below_amount.status_code == 400
    assert "monthly_max_usd" in max_below_amount.json()["fields"]
    assert customer.api.get("/api/v1/auto-reload").data == defaults.data
    assert Account.objects.get(id=customer.id).auto_reload_threshold_nanos is None


def test_raising_the_threshold_above_the_balance_reloads_and_turning_off_clears_it(
        make_customer, save_card):
    # Given $6 of credit and auto-reload at $3
    customer = _customer_with_reload(make_customer, save_card)
    assert not LowBalanceEvent.objects.filter(account=customer.account).exists()

    # When the threshold is raised to $8, above the balance, and then saved again unchanged
    raised = customer.api.put("/api/v1/auto-reload", {"threshold_usd": "8.00"}, format="json")
    customer.api.put("/api/v1/auto-reload", {"threshold_usd": "8.00"}, format="json")

    # Then one crossing is recorded for the reload, and the run path's trigger follows
    assert raised.status_code == 200
    [crossing] = LowBalanceEvent.objects.filter(account=customer.account)
    assert (crossing.threshold_nanos, crossing.balance_after_nanos) == (8 * USD, 6 * USD)
    assert Account.objects.get(id=customer.id).auto_reload_threshold_nanos == 8 * USD

    # When auto-reload is turned off, the trigger is cleared and spending records nothing
    off = customer.api.put("/api/v1/auto-reload", {"enabled": False}, format="json")
    assert off.data["enabled"] is False
    assert Account.objects.get(id=customer.id).auto_reload_threshold_nanos is None
    credit_debit(account_id=customer.id, amount_nanos=5 * USD, reason="usage")
    assert LowBalanceEvent.objects.filter(account=customer.account).count() == 1


def test_the_sweep_finds_charges_whose_worker_died_and_crossings_nobody_picked_up(
        make_customer, save_card):
    from billing.auto_reload import low_balance_events_unhandled, payments_stalled

    customer = _customer_with_reload(make_customer, save_card, buy=None)
    now = datetime.now(UTC)
    old = now - timedelta(minutes=5)
    dead, alive = (LowBalanceEvent.objects.create(
        account=customer.account, threshold_nanos=3 * USD, balance_before_nanos=3 * USD,
        balance_after_nanos=USD, created_at=old) for _ in range(2))
    forgotten = LowBalanceEvent.objects.create(
        account=customer.account, threshold_nanos=3 * USD, balance_before_nanos=3 * USD,
        balance_after_nanos=USD, created_at=old)
    LowBalanceEvent.objects.create(account=customer.account, threshold_nanos=3 * USD,
                                   balance_before_nanos=3 * USD, balance_after_nanos=USD,
                                   created_at=now)  # too recent: its task may still come
    common = {"account": customer.account, "purpose": Payment.Purpose.AUTO_RELOAD,
              "amount_nanos": 10 * USD, "created_at": old, "updated_at": old}
    stalled = Payment.objects.create(**common, low_balance_event=dead,
                                     idempotency_key="auto-reload:dead",
                                     claimed_until=now - timedelta(seconds=1))
    Payment.objects.create(**{**common, "account": make_customer().account},
                           low_balance_event=alive, idempotency_key="auto-reload:alive",
                           claimed_until=now + timedelta(minutes=1))

    assert payments_stalled(now=now) == [stalled.id]
    assert low_balance_events_unhandled(now=now) == [forgotten.id]


def test_a_charge_not_resumed_within_stripes_idempotency_window_is_given_up_not_sent_again(
        make_customer, save_card, stripe_client):
    # Given a reload whose worker died 23 hours ago, before or after reaching Stripe
    customer = _customer_with_reload(make_customer, save_card)
    crossing = _cross(customer.account, to_nanos=2 * USD)
    now = datetime.now(UTC)
    created = now - timedelta(hours=23)
    stalled = Payment.objects.create(
        account=customer.account, purpose=Payment.Purpose.AUTO_RELOAD, amount_nanos=10 * USD,
        card=BillingProfile.objects.get(account=customer.account).default_card,
        low_balance_event=crossing, idempotency_key=f"auto-reload:{crossing.id}",
        claimed_until=created + timedelta(minutes=2), created_at=created, updated_at=created)
    balance = Account.objects.get(id=customer.account.id).balance_nanos

    # When the sweep resumes it (Stripe would no longer recognise its idempotency key)
    resumed = payment_resume(payment_id=stalled.id, now=now)

    # Then nothing is sent to Stripe again: no new charge, no credit; the payment is
    # failed with the reason, and auto-reload pauses and says why
    assert (resumed.status, resumed.failure_code) == ("failed", "not_resumed")
    assert _stripe_charges(stripe_client, customer.account) == [500]
    assert Account.objects.get(id=customer.account.id).balance_nanos == balance
    assert not Purchase.objects.filter(account=customer.account,
                                       kind=Purchase.Kind.AUTO_RELOAD).exists()
    profile = BillingProfile.objects.get(account=customer.account)
    assert profile.auto_reload_paused_reason.startswith("not_resumed")


class SameKeyInFlightAtStripe(StripeGateway):
    """Stripe's answer to a charge sent while another call with its idempotency key is
    still in progress there (409), which localstripe never gives."""

    def payment_intent_create(self, **params):
        def in_progress(*args, **kwargs):
            raise stripe.IdempotencyError(
                "There is currently another in-progress request using this Stripe token",
                http_status=409)

        return self._call(in_progress)


def test_a_charge_whose_key_is_still_in_flight_at_stripe_is_retried_not_declined(
        make_customer, save_card, stripe_client, settings, mailoutbox):
    # Given a crossing whose reload is being charged by a worker that Stripe still serves
    customer = _customer_with_reload(make_customer, save_card)
    crossing = _cross(customer.account, to_nanos=2 * USD)
    settings.BILLING_STRIPE_GATEWAY = f"{__name__}.SameKeyInFlightAtStripe"

    # When another worker sends the same charge and Stripe answers 409
    with pytest.raises(StripeUnavailable):
        auto_reload_run(low_balance_event_id=crossing.id)

    # Then it is not taken as a decline: the payment stays in flight, free to be resumed,
    # auto-reload stays on and the customer is not told of a failure
    payment = Payment.objects.get(low_balance_event=crossing)
    assert payment.status in Payment.IN_FLIGHT and payment.claimed_until is None
    assert BillingProfile.objects.get(account=customer.account).auto_reload_paused_at is None
    assert mailoutbox == []

    # And once Stripe answers, the resumed charge is made, once
    settings.BILLING_STRIPE_GATEWAY = "billing.stripe_gateway.StripeGateway"
    assert payment_resume(payment_id=payment.id).status == "succeeded"
    assert _stripe_charges(stripe_client, customer.account) == [500, 1000]
