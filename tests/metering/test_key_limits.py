"""Spend limits on API keys (INTERNAL_API.md, v1.1): provisioning, the authorize refusal,
what counts and when it is given back, period boundaries, and the 80% / 100% emails."""

from datetime import timedelta
from decimal import Decimal

import pytest
from django.core import mail
from django.db import connection
from django.db.models import F

from accounts.models import ApiKey
from accounts.services import api_key_create
from metering import authorize as authorize_module
from metering.authorize import hold_authorize
from metering.holds import hold_release, holds_expire
from metering.key_limits import api_key_spend_limit_set, key_spend_summary
from metering.models import Hold
from metering.selectors import books_discrepancies
from metering.settle import Usage, hold_settle
from ratelimits.key_limits import KeySpendLimitReached, period_end, period_start
from ratelimits.models import KeySpend, KeySpendNotice
from tests.conftest import INTERNAL_TOKEN
from tests.runpath import (
    MODEL_7B,
    MODEL_70B,
    RATE_7B,
    USD,
    balance_set,
    customer_create,
    utc,
    world_snapshot,
)

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("catalog")]

T0 = utc(2030, 9, 11, 15, 30)  # a Wednesday
US = timedelta(microseconds=1)


@pytest.fixture
def api(client):
    from rest_framework.test import APIClient

    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {INTERNAL_TOKEN}")
    return api


def keys_url(customer, key_id=None):
    base = f"/internal/v1/accounts/{customer.account_id}/api-keys"
    return base if key_id is None else f"{base}/{key_id}"


def authorize(customer, key, request_id, now, seconds=10, model=MODEL_7B):
    return hold_authorize(api_key=key, model_id=model, request_id=request_id,
                          estimate_seconds=Decimal(seconds), now=now)


def spent(key_id, start) -> int:
    return KeySpend.objects.filter(api_key_id=key_id, period_start=start).values_list(
        "spent_nanos", flat=True).first() or 0


# --- Provisioning ---------------------------------------------------------------------


def test_a_key_is_created_read_and_changed_with_its_limit(api):
    customer = customer_create(purchased_usd=25)
    response = api.post(keys_url(customer), {"name": "app", "spend_limit_usd": "20.00"},
                        format="json")
    assert response.status_code == 201
    body = response.json()
    assert (body["spend_limit_usd"], body["spend_limit_period"]) == ("20.000000000", "month")
    key_id = body["id"]

    read = api.get(keys_url(customer, key_id)).json()
    assert set(read) == {"id", "name", "prefix", "kind", "created_at", "last_used_at",
                         "revoked_at",
                         "spend_limit_usd", "spend_limit_period", "spent_usd",
                         "period_resets_at"}
    assert "key" not in read and read["spent_usd"] == "0.000000000"
    assert read["period_resets_at"] is not None

    changed = api.patch(keys_url(customer, key_id), {"spend_limit_usd": "50.00",
                                                     "spend_limit_period": "week"},
                        format="json").json()
    assert (changed["spend_limit_usd"], changed["spend_limit_period"]) == (
        "50.000000000", "week")
    total = api.patch(keys_url(customer, key_id), {"spend_limit_period": "total"},
                      format="json").json()
    assert (total["spend_limit_usd"], total["spend_limit_period"],
            total["period_resets_at"]) == ("50.000000000", "total", None)
    removed = api.patch(keys_url(customer, key_id), {"spend_limit_usd": None},
                        format="json").json()
    assert (removed["spend_limit_usd"], removed["spend_limit_period"],
            removed["period_resets_at"]) == (None, None, None)
    plain = api.post(keys_url(customer), {"name": "plain"}, format="json").json()
    assert (plain["spend_limit_usd"], plain["spend_limit_period"]) == (None, None)


@pytest.mark.parametrize(("body", "field"), [
    ({"spend_limit_usd": "-1"}, "spend_limit_usd"),
    ({"spend_limit_usd": "1.0000000001"}, "spend_limit_usd"),
    ({"spend_limit_usd": 20}, "spend_limit_usd"),
    ({"spend_limit_usd": "twenty"}, "spend_limit_usd"),
    ({"spend_limit_usd": "1e3"}, "spend_limit_usd"),
    ({"spend_limit_usd": "20", "spend_limit_period": "year"}, "spend_limit_period"),
    ({"spend_limit_usd": "20", "spend_limit_period": 7}, "spend_limit_period"),
    ({"spend_limit_period": "day"}, "spend_limit_period"),
])
def test_a_bad_limit_is_400_and_creates_no_key(api, body, field):
    customer = customer_create()
    before = list(ApiKey.objects.values_list("id", flat=True))
    response = api.post(keys_url(customer), {"name": "app", **body}, format="json")
    assert response.status_code == 400, response.json()
    assert response.json()["code"] == "invalid_request"
    assert field in response.json()["fields"]
    assert list(ApiKey.objects.values_list("id", flat=True)) == before


@pytest.mark.parametrize(("body", "field"), [
    ({}, "spend_limit_usd"),
    ({"spend_limit_usd": "-0.5"}, "spend_limit_usd"),
    ({"spend_limit_usd": "abc"}, "spend_limit_usd"),
    ({"spend_limit_period": "fortnight"}, "spend_limit_period"),
])
def test_a_bad_change_is_400_and_changes_nothing(api, body, field):
    customer = customer_create()
    api_key, _ = api_key_create(account_id=customer.account_id, name="k",
                                spend_limit_nanos=5 * USD, spend_limit_period="day")
    response = api.patch(keys_url(customer, api_key.id), body, format="json")
    assert response.status_code == 400
    assert field in response.json()["fields"]
    api_key.refresh_from_db()
    assert (api_key.spend_limit_nanos, api_key.spend_limit_period) == (5 * USD, "day")


def test_a_period_without_a_limit_is_refused_on_a_key_without_one(api):
    customer = customer_create()
    response = api.patch(keys_url(customer, customer.key_id), {"spend_limit_period": "day"},
                         format="json")
    assert response.status_code == 400
    assert "spend_limit_period" in response.json()["fields"]
    assert ApiKey.objects.get(id=customer.key_id).spend_limit_period == ""


def test_another_accounts_key_is_404(api):
    mine, theirs = customer_create(), customer_create()
    for response in (api.get(keys_url(mine, theirs.key_id)),
                     api.patch(keys_url(mine, theirs.key_id), {"spend_limit_usd": "1"},
                               format="json"),
                     api.get(keys_url(mine, "not-a-uuid"))):
        assert response.status_code == 404
        assert response.json()["code"] == "api_key_not_found"
    assert ApiKey.objects.get(id=theirs.key_id).spend_limit_nanos is None


# --- Authorize, settle, release, expiry ---------------------------------------------------


def test_the_refusal_names_the_limit_the_spend_and_the_reset(api):
    customer = customer_create(purchased_usd=25)  # the API call's clock is today's
    api_key_spend_limit_set(account_id=customer.account_id, key_id=customer.key_id,
                            limit_nanos=20 * RATE_7B, period="day")
    authorize(customer, customer.key, "a", None, seconds=15)
    before = world_snapshot(customer.account_id)
    response = api.post("/internal/v1/authorize", {
        "api_key": customer.key, "model": MODEL_7B, "request_id": "b",
        "estimate": {"seconds": 6}}, format="json")
    assert response.status_code == 402
    body = response.json()
    assert {k: body[k] for k in ("status", "error", "code")} == {
        "status": 402, "error": "Payment Required", "code": "key_spend_limit"}
    assert body["message"]
    assert body["limit_usd"] == "0.001440000"
    assert body["spent_usd"] == "0.001080000"
    assert body["resets_at"] is not None and body["resets_at"].endswith("T00:00:00Z")
    assert world_snapshot(customer.account_id) == before
    # The remaining limit still covers a run that fits it.
    assert authorize(customer, customer.key, "c", None, seconds=5).reserved_nanos \
        == 5 * RATE_7B


def test_a_limited_key_runs_on_the_fast_path(monkeypatch):
    customer = customer_create(purchased_usd=25, now=T0 - timedelta(hours=1))
    api_key_spend_limit_set(account_id=customer.account_id, key_id=customer.key_id,
                            limit_nanos=USD, period="month")

    def no_slow_path(**kwargs):
        raise AssertionError("the slow path ran")

    authorize(customer, customer.key, "warm", T0)  # the process reads the key's limit
    monkeypatch.setattr(authorize_module, "_authorize_with_slow_path", no_slow_path)
    authorization = authorize(customer, customer.key, "fast", T0)
    hold = Hold.objects.get(id=authorization.hold_id)
    assert hold.spend_period_start == utc(2030, 9, 1)
    assert spent(customer.key_id, utc(2030, 9, 1)) == 2 * 10 * RATE_7B


def test_the_refusal_comes_after_the_size_lock_and_the_slots_and_before_the_balance():
    customer = customer_create(now=T0 - timedelta(hours=1))  # $1 free, no purchase: 1 slot
    api_key_spend_limit_set(account_id=customer.account_id, key_id=customer.key_id,
                            limit_nanos=1, period="day")
    with pytest.raises(Exception) as size:
        authorize(customer, customer.key, "big", T0, model=MODEL_70B)
    assert size.value.code == "model_size_locked"
    api_key_spend_limit_set(account_id=customer.account_id, key_id=customer.key_id,
                            limit_nanos=None)
    authorize(customer, customer.key, "running", T0)  # takes the only slot
    api_key_spend_limit_set(account_id=customer.account_id, key_id=customer.key_id,
                            limit_nanos=1, period="day")
    with pytest.raises(Exception) as slots:
        authorize(customer, customer.key, "second", T0)
    assert slots.value.code == "concurrency_limit"
    hold_release(hold_id=Hold.objects.get(request_id="running").id, now=T0)
    balance_set(account_id=customer.account_id, balance_nanos=0)
    with pytest.raises(KeySpendLimitReached):  # not insufficient_credits
        authorize(customer, customer.key, "third", T0)


def test_release_expiry_and_settle_move_the_counter():
    customer = customer_create(purchased_usd=25, now=T0 - timedelta(hours=1))
    api_key_spend_limit_set(account_id=customer.account_id, key_id=customer.key_id,
                            limit_nanos=100 * RATE_7B, period="month", now=T0)
    start = utc(2030, 9, 1)
    released = authorize(customer, customer.key, "released", T0, seconds=30)
    lapsed = authorize(customer, customer.key, "lapsed", T0, seconds=20)
    under = authorize(customer, customer.key, "under", T0, seconds=40)
    assert spent(customer.key_id, start) == 90 * RATE_7B
    hold_release(hold_id=released.hold_id, now=T0)
    assert spent(customer.key_id, start) == 60 * RATE_7B
    holds_expire(account_id=customer.account_id, now=T0 + timedelta(minutes=3))
    assert spent(customer.key_id, start) == 0
    # A late settle of the lapsed hold charges it, in the period it was authorized in.
    hold_settle(hold_id=lapsed.hold_id, usage=Usage(inference_seconds=Decimal(4)),
                now=T0 + timedelta(minutes=5))
    assert spent(customer.key_id, start) == 4 * RATE_7B
    # Settle above the reservation: charged in full; the key ends above its limit.
    assert Hold.objects.get(id=under.hold_id).status == Hold.Status.EXPIRED
    over = authorize(customer, customer.key, "over", T0 + timedelta(minutes=6), seconds=90)
    hold_settle(hold_id=over.hold_id, usage=Usage(inference_seconds=Decimal(150)),
                now=T0 + timedelta(minutes=7))
    assert spent(customer.key_id, start) == 154 * RATE_7B
    with pytest.raises(KeySpendLimitReached):
        authorize(customer, customer.key, "next", T0 + timedelta(minutes=8), seconds=1)
    assert key_spend_summary(account_id=customer.account_id, key_id=customer.key_id,
                             now=T0).spent_nanos == 154 * RATE_7B
    assert books_discrepancies() == []


def test_a_limit_set_mid_period_counts_the_runs_already_authorized_in_it():
    customer = customer_create(purchased_usd=25, now=utc(2030, 8, 30))
    settled = authorize(customer, customer.key, "settled", T0 - timedelta(days=1), 10)
    hold_settle(hold_id=settled.hold_id, usage=Usage(inference_seconds=Decimal(7)),
                now=T0 - timedelta(days=1))
    authorize(customer, customer.key, "open", T0, seconds=20)
    authorize(customer, customer.key, "last-month", utc(2030, 8, 31, 23), seconds=30)
    api_key_spend_limit_set(account_id=customer.account_id, key_id=customer.key_id,
                            limit_nanos=USD, period="month", now=T0)
    assert spent(customer.key_id, utc(2030, 9, 1)) == 27 * RATE_7B
    # Moved to the week (from Monday 9 September): only this week's runs count.
    api_key_spend_limit_set(account_id=customer.account_id, key_id=customer.key_id,
                            period="week", now=T0)
    assert spent(customer.key_id, utc(2030, 9, 9)) == 27 * RATE_7B
    assert spent(customer.key_id, utc(2030, 9, 1)) == 0
    api_key_spend_limit_set(account_id=customer.account_id, key_id=customer.key_id,
                            period="day", now=T0)
    assert spent(customer.key_id, utc(2030, 9, 11)) == 20 * RATE_7B
    assert books_discrepancies() == []


# --- Period boundaries, with the clock frozen at the boundary -----------------------------

BOUNDARIES = [
    ("day", utc(2030, 9, 12), utc(2030, 9, 11), utc(2030, 9, 12)),
    # ISO weeks start on Monday: 2030-09-16 is one.
    ("week", utc(2030, 9, 16), utc(2030, 9, 9), utc(2030, 9, 16)),
    ("month", utc(2030, 10, 1), utc(2030, 9, 1), utc(2030, 10, 1)),
    ("month", utc(2031, 1, 1), utc(2030, 12, 1), utc(2031, 1, 1)),
]


@pytest.mark.parametrize(("period", "boundary", "old", "new"), BOUNDARIES,
                         ids=[f"{p}-{b:%Y-%m-%d}" for p, b, _, _ in BOUNDARIES])
def test_a_run_counts_in_the_period_it_was_authorized_in(period, boundary, old, new):
    # Given a key whose limit is used up in the old period.
    customer = customer_create(purchased_usd=25, now=boundary - timedelta(days=1))
    api_key_spend_limit_set(account_id=customer.account_id, key_id=customer.key_id,
                            limit_nanos=10 * RATE_7B, period=period,
                            now=boundary - timedelta(hours=1))
    first = authorize(customer, customer.key, "fills", boundary - timedelta(hours=1))
    hold_settle(hold_id=first.hold_id, usage=Usage(inference_seconds=Decimal(10)),
                now=boundary - timedelta(hours=1))
    assert period_end(period=period, now=boundary - US) == boundary

    # Then at -1 us it is refused, and the refusal says when the period resets.
    with pytest.raises(KeySpendLimitReached) as refused:
        authorize(customer, customer.key, "minus", boundary - US)
    assert refused.value.extra["resets_at"] == boundary.isoformat().replace("+00:00", "Z")
    # At 0 and +1 us the new period takes it, and the runs count there.
    at = authorize(customer, customer.key, "zero", boundary, seconds=4)
    after = authorize(customer, customer.key, "plus", boundary + US, seconds=5)
    assert Hold.objects.get(id=at.hold_id).spend_period_start == new
    assert Hold.objects.get(id=after.hold_id).spend_period_start == new
    assert spent(customer.key_id, old) == 10 * RATE_7B
    assert spent(customer.key_id, new) == 9 * RATE_7B
    # A settle after the boundary of a run authorized before it counts in the old one.
    late = Hold.objects.get(id=first.hold_id)
    assert late.spend_period_start == old
    assert period_start(period=period, now=boundary - US) == old
    assert period_start(period=period, now=boundary) == new
    assert books_discrepancies() == []


def test_a_run_authorized_a_microsecond_before_midnight_and_settled_after_counts_before():
    customer = customer_create(purchased_usd=25, now=utc(2030, 9, 11))
    midnight = utc(2030, 9, 12)
    api_key_spend_limit_set(account_id=customer.account_id, key_id=customer.key_id,
                            limit_nanos=USD, period="day", now=midnight - US)
    hold = authorize(customer, customer.key, "straddles", midnight - US, seconds=10)
    hold_settle(hold_id=hold.hold_id, usage=Usage(inference_seconds=Decimal(3)),
                now=midnight + timedelta(seconds=3))
    assert spent(customer.key_id, utc(2030, 9, 11)) == 3 * RATE_7B
    assert spent(customer.key_id, midnight) == 0


@pytest.mark.parametrize("moment", [utc(1999, 12, 31, 23, 59, 59, 999999),
                                    utc(2030, 9, 12), utc(2030, 9, 12, 0, 0, 0, 1)])
def test_a_limit_in_total_never_resets(moment):
    customer = customer_create(purchased_usd=25, now=moment - timedelta(hours=1))
    api_key_spend_limit_set(account_id=customer.account_id, key_id=customer.key_id,
                            limit_nanos=10 * RATE_7B, period="total",
                            now=moment - timedelta(hours=1))
    fills = authorize(customer, customer.key, "fills", moment - timedelta(hours=1))
    hold_settle(hold_id=fills.hold_id, usage=Usage(inference_seconds=Decimal(10)),
                now=moment - timedelta(hours=1))
    with pytest.raises(KeySpendLimitReached) as refused:
        authorize(customer, customer.key, "later", moment)
    assert refused.value.extra["resets_at"] is None
    assert period_end(period="total", now=moment) is None


# --- Emails at 80% and 100%, once each per period --------------------------------------


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_a_key_reaching_80_and_100_percent_is_told_once_each_per_period(eager_tasks,
                                                                          settings):
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    customer = customer_create(purchased_usd=25, now=T0 - timedelta(hours=1))
    api_key_spend_limit_set(account_id=customer.account_id, key_id=customer.key_id,
                            limit_nanos=100 * RATE_7B, period="day", now=T0)

    def run(request_id, seconds, now=T0):
        hold = authorize(customer, customer.key, request_id, now, seconds=seconds)
        hold_settle(hold_id=hold.hold_id, usage=Usage(inference_seconds=Decimal(seconds)),
                    now=now)

    def spend_mail():  # the key's emails (other emails, a receipt, may go out too)
        return [m for m in mail.outbox if "spend limit" in m.subject]

    run("a", 70)
    assert spend_mail() == []
    run("b", 15)  # 85%
    run("c", 1)  # still above 80%: not told again
    assert len(spend_mail()) == 1
    message = spend_mail()[0]
    assert "80%" in message.subject and "gateway" in message.subject
    assert "0.006120000 USD" in message.body and "0.007200000 USD" in message.body
    html, kind = message.alternatives[0]
    assert kind == "text/html" and "<strong>gateway</strong>" in html
    run("d", 14)  # 100%
    assert len(spend_mail()) == 2 and "reached its spend limit" in spend_mail()[1].subject
    assert "refused until the limit resets on 2030-09-12 00:00 UTC" in spend_mail()[1].body
    # The next day is a new period: told again when it gets there.
    run("e", 90, now=T0 + timedelta(days=1))
    assert len(spend_mail()) == 3
    assert KeySpendNotice.objects.filter(sent_at__isnull=False).count() == 3
    assert list(KeySpendNotice.objects.order_by("id").values_list("percent", flat=True)) == [
        80, 100, 80]


def test_the_portable_authorize_counts_the_same(monkeypatch):
    # SQLite's first-look mode: the same rule, in one transaction.
    customer = customer_create(purchased_usd=25, now=T0 - timedelta(hours=1))
    api_key_spend_limit_set(account_id=customer.account_id, key_id=customer.key_id,
                            limit_nanos=25 * RATE_7B, period="month")
    from metering import sql

    assert connection.vendor == "postgresql"
    monkeypatch.setattr(sql, "is_postgresql", lambda: False)
    authorize(customer, customer.key, "one", T0, seconds=10)
    authorize(customer, customer.key, "two", T0, seconds=15)
    with pytest.raises(KeySpendLimitReached):
        authorize(customer, customer.key, "three", T0, seconds=1)
    assert spent(customer.key_id, utc(2030, 9, 1)) == 25 * RATE_7B
    assert customer.account().held_nanos == 25 * RATE_7B
    assert books_discrepancies() == []


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_a_notice_whose_task_was_never_enqueued_is_sent_by_the_sweep_once(eager_tasks,
                                                                          settings,
                                                                          monkeypatch):
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    from ratelimits import key_limit_notices
    from ratelimits.tasks import key_spend_notices_unsent_send

    customer = customer_create(purchased_usd=25)
    api_key_spend_limit_set(account_id=customer.account_id, key_id=customer.key_id,
                            limit_nanos=10 * RATE_7B, period="total")
    # The broker is down when the settle commits: the notice is recorded, not sent.
    monkeypatch.setattr(key_limit_notices, "key_spend_notice_dispatch",
                        lambda **kwargs: None)
    hold = hold_authorize(api_key=customer.key, model_id=MODEL_7B, request_id="r",
                          estimate_seconds=Decimal(10))
    hold_settle(hold_id=hold.hold_id, usage=Usage(inference_seconds=Decimal(10)))
    spend_mail = [m for m in mail.outbox if "spend limit" in m.subject]
    assert spend_mail == [] and KeySpendNotice.objects.count() == 2
    # Not yet: the notice is recent. Later: both are sent, once.
    assert key_spend_notices_unsent_send.apply().result == 0
    KeySpendNotice.objects.update(created_at=F("created_at") - timedelta(minutes=6))
    # 80% and 100% at once: one email, the 100% one.
    assert key_spend_notices_unsent_send.apply().result == 1
    assert key_spend_notices_unsent_send.apply().result == 0
    spend_mail = [m for m in mail.outbox if "spend limit" in m.subject]
    assert len(spend_mail) == 1 and "reached its spend limit" in spend_mail[0].subject
