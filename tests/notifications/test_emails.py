"""The emails customers get: welcome, a receipt after each purchase, low balance once
per crossing, credit expiring in 3 days once per lot. Each is checked as the customer
would read it (recipient, subject, both the plain-text and the HTML part), and sent
exactly once however often, or however concurrently, its task runs."""

from datetime import timedelta

import pytest
import time_machine

from accounts.models import Account
from billing import tasks
from billing.credit import (
    credit_debit,
    credit_grant,
    credit_lots_expire_due,
    purchase_record,
)
from billing.ledger import Book
from billing.models import BillingProfile, CreditLot, LowBalanceEvent, Purchase
from billing.notifications import (
    credit_expiring_email_send,
    credit_expiring_lot_ids,
    low_balance_email_send,
    purchase_receipt_email_send,
)
from notifications.models import EmailNotice
from notifications.services import (
    account_welcome_email_enqueue,
    account_welcome_email_send,
    usd_display,
)
from tests.factories import AccountFactory
from tests.runpath import eager_tasks  # noqa: F401 (fixture)
from tests.support import T0, USD, run_concurrently

SITE = "https://dashboard.example.test"


@pytest.fixture(autouse=True)
def _site_url(settings):
    settings.SITE_URL = SITE + "/"  # a trailing slash must not double up in links


def parts(email) -> tuple[str, str]:
    """The plain-text body and the HTML alternative; both must be there."""
    [(html, mimetype)] = email.alternatives
    assert mimetype == "text/html"
    assert email.body.strip() and "<html" in html and "</html>" in html
    assert "{{" not in email.body + html and "{%" not in email.body + html
    return email.body, html


def owner(account) -> str:
    return Account.objects.select_related("user").get(id=account.id).user.email


# --- Welcome -------------------------------------------------------------------------------


@pytest.mark.django_db
def test_the_welcome_email_goes_to_the_new_customer_once(mailoutbox):
    account = AccountFactory()

    assert account_welcome_email_send(account_id=account.id) is True
    assert account_welcome_email_send(account_id=account.id) is False

    [email] = mailoutbox
    assert email.to == [owner(account)]
    assert email.subject == "Welcome: your account is open with $1.00 of free credit"
    text, html = parts(email)
    for part in (text, html):
        assert "$1.00" in part and owner(account) in part and f"{SITE}/" in part
    assert "every 4 weeks" in text
    assert EmailNotice.objects.get(kind="welcome").subject_key == str(account.id)


@pytest.mark.django_db
def test_sign_up_enqueues_the_welcome_email_for_after_commit(
        mailoutbox, eager_tasks, django_capture_on_commit_callbacks):  # noqa: F811
    account = AccountFactory()

    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        account_welcome_email_enqueue(account_id=account.id)
        assert mailoutbox == []  # nothing before the transaction commits

    assert len(callbacks) == 1
    assert [email.to for email in mailoutbox] == [[owner(account)]]


@pytest.mark.django_db
def test_signing_up_on_the_dashboard_sends_the_welcome_email(
        client, mailoutbox, eager_tasks, django_capture_on_commit_callbacks):  # noqa: F811
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post("/account/signup/", {
            "email": "New.Customer@Example.com", "password1": "a-long-passphrase-for-tests-7",
            "password2": "a-long-passphrase-for-tests-7"})

    assert response.status_code == 302
    welcome = [email for email in mailoutbox if email.subject.startswith("Welcome")]
    assert [email.to for email in welcome] == [["new.customer@example.com"]]
    assert "$1.00" in welcome[0].body
    # and the verification email still goes out beside it
    assert len(mailoutbox) == 2


@pytest.mark.django_db
def test_no_welcome_for_an_account_that_does_not_exist(mailoutbox):
    assert account_welcome_email_send(account_id="6d1e4f0e-0000-4000-8000-000000000000") \
        is False
    assert mailoutbox == []


# --- Receipts ------------------------------------------------------------------------------


@pytest.mark.django_db
def test_each_purchase_sends_its_receipt_once_after_commit(
        mailoutbox, eager_tasks, django_capture_on_commit_callbacks):  # noqa: F811
    account = AccountFactory()
    at = T0.replace(hour=14, minute=5)

    # When a purchase paid by invoice is recorded, and recorded again (same reference)
    with django_capture_on_commit_callbacks(execute=True):
        purchase, created = purchase_record(
            account_id=account.id, amount_nanos=1250 * USD + 500_000_000,
            reference="INV-2026-0042", kind=Purchase.Kind.INVOICE,
            cash_book=Book.EXTERNAL_CASH, now=at)
    with django_capture_on_commit_callbacks(execute=True):
        _, again = purchase_record(account_id=account.id, amount_nanos=1250 * USD,
                                   reference="INV-2026-0042", kind=Purchase.Kind.INVOICE,
                                   cash_book=Book.EXTERNAL_CASH, now=at)
    # and the task is redelivered
    tasks.purchase_receipt_email.delay(str(purchase.id))

    # Then one receipt went out, to the owner, with everything a receipt shows
    assert (created, again) == (True, False)
    [email] = mailoutbox
    assert email.to == [owner(account)]
    assert email.subject == "Your receipt: $1,250.50 of credit, 2 Mar 2026, 14:05 UTC"
    text, html = parts(email)
    receipt_url = f"{SITE}/dashboard/credits/purchases/{purchase.id}/"
    for part in (text, html):
        assert "$1,250.50" in part
        assert "2 Mar 2026, 14:05 UTC" in part
        assert "INV-2026-0042" in part
        assert "Paid outside Stripe" in part and "Invoice or bank transfer" in part
        assert receipt_url in part
        assert "30 Mar 2026" in part  # the credit's expiry, 4 weeks on
    assert f'href="{receipt_url}"' in html


@pytest.mark.django_db
def test_a_receipt_names_the_card_that_paid(mailoutbox):
    from billing.models import Card, Payment

    account = AccountFactory()
    purchase, _ = purchase_record(account_id=account.id, amount_nanos=25 * USD,
                                  reference="pi_test_123", kind=Purchase.Kind.STRIPE, now=T0)
    card = Card.objects.create(account=account, stripe_payment_method_id="pm_test_visa",
                               brand="visa", last4="4242", exp_month=12, exp_year=2034)
    Payment.objects.create(account=account, purpose=Payment.Purpose.PURCHASE,
                           status=Payment.Status.SUCCEEDED, amount_nanos=25 * USD,
                           idempotency_key="purchase:test", card=card, purchase=purchase,
                           stripe_payment_intent_id="pi_test_123")

    assert purchase_receipt_email_send(purchase_id=purchase.id) is True

    [email] = mailoutbox
    text, html = parts(email)
    for part in (text, html):
        assert "Visa ending in 4242" in part and "pi_test_123" in part and "$25.00" in part
        assert "Card payment" in part


# --- Low balance ---------------------------------------------------------------------------


@pytest.fixture
def reloading_account():
    """$5 of credit ($1 free, $4 granted), auto-reload on at $3 for $10 ($100 a month)."""
    account = AccountFactory(now=T0)
    credit_grant(account_id=account.id, amount_nanos=4 * USD, reason="support", now=T0)
    BillingProfile.objects.create(account=account, auto_reload_enabled=True)
    Account.objects.filter(id=account.id).update(auto_reload_threshold_nanos=3 * USD)
    return account


@pytest.mark.django_db
def test_a_crossing_sends_one_low_balance_email_after_commit(
        reloading_account, mailoutbox, django_capture_on_commit_callbacks):
    account = reloading_account

    # When a charge crosses the threshold, and more charges follow below it
    with django_capture_on_commit_callbacks() as callbacks:
        credit_debit(account_id=account.id, amount_nanos=2 * USD + 500_000_000,
                     reason="use", now=T0)
        credit_debit(account_id=account.id, amount_nanos=USD, reason="use", now=T0)
    [event] = LowBalanceEvent.objects.filter(account=account)
    assert mailoutbox == []  # not before the commit
    # (the crossing is handed on after commit: to auto-reload, and to the email task)
    assert len(callbacks) == 1
    low_balance_email_send(low_balance_event_id=event.id)
    low_balance_email_send(low_balance_event_id=event.id)  # a redelivered task

    [email] = mailoutbox
    assert email.to == [owner(account)]
    assert email.subject == "Your balance is below $3.00"
    text, html = parts(email)
    for part in (text, html):
        assert "$2.50" in part  # the balance the crossing left
        assert "2 Mar 2026, 09:30 UTC" in part
        assert "$10.00" in part and "$100.00" in part  # what auto-reload will add
        assert f"{SITE}/dashboard/credits/" in part


@pytest.mark.django_db
def test_the_crossing_dispatch_enqueues_the_email(reloading_account, mailoutbox,
                                                  eager_tasks,  # noqa: F811
                                                  django_capture_on_commit_callbacks):
    account = reloading_account
    with django_capture_on_commit_callbacks(execute=True):
        credit_debit(account_id=account.id, amount_nanos=3 * USD, reason="use", now=T0)

    # The crossing's email; and, as this account has no card to reload from, auto-reload
    # pausing says so in its own
    assert sorted(e.subject for e in mailoutbox) == [
        "Auto-reload failed: your card was not charged", "Your balance is below $3.00"]


@pytest.mark.django_db
def test_each_crossing_gets_its_own_email(reloading_account, mailoutbox):
    account = reloading_account
    credit_debit(account_id=account.id, amount_nanos=3 * USD, reason="use", now=T0)
    credit_grant(account_id=account.id, amount_nanos=5 * USD, reason="top-up", now=T0)
    credit_debit(account_id=account.id, amount_nanos=5 * USD, reason="use", now=T0)

    events = list(LowBalanceEvent.objects.filter(account=account).order_by("id"))
    assert len(events) == 2
    for event in events * 2:
        tasks.low_balance_email.apply(args=(event.id,)).get()

    assert [e.subject for e in mailoutbox] == ["Your balance is below $3.00"] * 2
    assert EmailNotice.objects.filter(kind="low_balance").count() == 2


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_one_low_balance_email_when_two_workers_run_the_task_at_once(mailoutbox):
    account = AccountFactory()
    credit_grant(account_id=account.id, amount_nanos=2 * USD, reason="support")
    Account.objects.filter(id=account.id).update(auto_reload_threshold_nanos=3 * USD)
    credit_debit(account_id=account.id, amount_nanos=500_000_000, reason="use")
    [event] = LowBalanceEvent.objects.filter(account=account)

    results = run_concurrently(
        [lambda: low_balance_email_send(low_balance_event_id=event.id)] * 4)

    assert sorted(results) == [False, False, False, True]
    assert len(mailoutbox) == 1
    text, _ = parts(mailoutbox[0])
    # Auto-reload was not set up on a profile: the email says what happens instead.
    assert "Runs stop when the credit runs out" in text


# --- Credit expiring in 3 days ----------------------------------------------------------


@pytest.fixture
def lots():
    """An account at T0 with lots in every situation. The free grant ($1, granted at
    T0 - 26 days) expires at T0 + 2 days."""
    start = T0 - timedelta(days=26)
    account = AccountFactory(now=start)

    def grant(amount, expires_at, reason):
        lot, _ = credit_grant(account_id=account.id, amount_nanos=amount,
                              reason=reason, expires_at=expires_at, now=start)
        return lot

    made = {
        "spent": grant(2 * USD, T0 + timedelta(days=1), "spent"),
        "soon": grant(5 * USD + 250_000_000, T0 + timedelta(days=1, hours=12), "soon"),
        "edge": grant(1 * USD, T0 + timedelta(days=3), "edge"),
        "later": grant(7 * USD, T0 + timedelta(days=3, seconds=1), "later"),
        "expired": grant(3 * USD, T0 - timedelta(hours=1), "expired"),
    }
    made["bought"], _ = purchase_record(account_id=account.id, amount_nanos=20 * USD,
                                        reference="INV-OLD", kind=Purchase.Kind.INVOICE,
                                        cash_book=Book.EXTERNAL_CASH, now=start)
    made["bought"] = made["bought"].lot
    made["free"] = CreditLot.objects.get(account=account, source=CreditLot.Source.FREE_GRANT)
    # The expired lot's expiry is recorded; the "spent" lot (soonest to expire of the
    # live ones) is spent in full.
    credit_lots_expire_due(account_id=account.id, now=T0 - timedelta(minutes=30))
    credit_debit(account_id=account.id, amount_nanos=2 * USD,
                 reason="use", now=T0 - timedelta(minutes=20))
    # A lot whose time is up at T0, its expiry not recorded yet
    made["lapsed"], _ = credit_grant(account_id=account.id, amount_nanos=4 * USD,
                                     reason="lapsed", expires_at=T0,
                                     now=T0 - timedelta(minutes=10))
    for lot in made.values():
        lot.refresh_from_db()
    assert made["spent"].remaining_nanos == 0 and made["expired"].expired_at is not None
    return account, made


@pytest.mark.django_db
def test_credit_expiring_within_3_days_is_announced_once_per_lot(lots, mailoutbox,
                                                                 eager_tasks):  # noqa: F811
    account, made = lots

    # When the periodic task runs at T0, and again (twice, as two beats might)
    with time_machine.travel(T0, tick=False):
        announced = [tasks.credit_expiring_emails_due.apply().get() for _ in range(3)]

    # Then one email for each lot with credit left that expires within 3 days: not the
    # spent one, not the expired or lapsed ones, not one 3 days and a second away, and
    # not the free grant (it is refreshed on its own)
    assert announced == [3, 0, 0]
    by_lot = {notice.subject_key: notice for notice in EmailNotice.objects.filter(
        kind="credit_expiring")}
    assert set(by_lot) == {str(made[name].id) for name in ("soon", "edge", "bought")}
    assert len(mailoutbox) == 3
    assert {tuple(email.to) for email in mailoutbox} == {(owner(account),)}
    soon = next(e for e in mailoutbox if "$5.25" in e.subject)
    assert soon.subject == "$5.25 of your credit expires on 3 Mar 2026, 21:30 UTC"
    text, html = parts(soon)
    for part in (text, html):
        assert "$5.25" in part and "3 Mar 2026, 21:30 UTC" in part
        assert "a credit grant on 4 Feb 2026" in part  # where it came from
        assert f"{SITE}/dashboard/credits/" in part
    bought = next(e for e in mailoutbox if "$20.00" in e.subject)
    assert "$20.00 from a purchase on 4 Feb 2026" in bought.body


@pytest.mark.django_db
def test_the_email_is_about_what_is_left_when_it_is_sent(lots, mailoutbox):
    account, made = lots
    # Part of the lot is spent before the task gets to it (it is the next to expire)
    credit_debit(account_id=account.id, amount_nanos=250_000_000, reason="use", now=T0)

    assert credit_expiring_email_send(lot_id=made["soon"].id, now=T0) is True
    assert mailoutbox[0].subject.startswith("$5.00 of your credit expires")


@pytest.mark.django_db
def test_no_email_for_a_lot_spent_or_expired_before_the_task_runs(lots, mailoutbox):
    account, made = lots
    with time_machine.travel(T0, tick=False):
        due = set(credit_expiring_lot_ids(now=T0))
    assert due == {made["soon"].id, made["edge"].id, made["bought"].id}

    # Between the scan and the send, one lot is spent and another's time passes
    credit_debit(account_id=account.id, amount_nanos=5 * USD + 250_000_000, reason="use",
                 now=T0)
    made["soon"].refresh_from_db()
    assert made["soon"].remaining_nanos == 0
    assert credit_expiring_email_send(lot_id=made["soon"].id, now=T0) is False
    assert credit_expiring_email_send(lot_id=made["edge"].id,
                                      now=T0 + timedelta(days=3)) is False
    for name in ("spent", "expired", "lapsed", "later", "free"):
        assert credit_expiring_email_send(lot_id=made[name].id, now=T0) is False, name
    assert mailoutbox == []
    assert not EmailNotice.objects.exists()


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_two_beats_at_once_send_one_email_per_lot(lots, mailoutbox):
    _, made = lots

    def beat():
        # What a worker does with the fan-out: every lot due, sent.
        return [credit_expiring_email_send(lot_id=lot_id, now=T0)
                for lot_id in credit_expiring_lot_ids(now=T0)]

    results = run_concurrently([beat] * 4)

    assert not any(isinstance(result, BaseException) for result in results), results
    assert sum(sum(result) for result in results) == 3
    assert len(mailoutbox) == 3
    assert len({email.subject for email in mailoutbox}) == 3
    assert set(EmailNotice.objects.filter(kind="credit_expiring").values_list(
        "subject_key", flat=True)) == {str(made[name].id) for name in ("soon", "edge",
                                                                        "bought")}


# --- Money as people read it -------------------------------------------------------------


@pytest.mark.parametrize(("nanos", "shown"), [
    (0, "$0.00"), (1 * USD, "$1.00"), (1_234_500_000_000, "$1,234.50"),
    (4_200_000, "$0.0042"), (1, "$0.000000001"), (-2_500_000_000, "-$2.50"),
])
def test_dollars_are_shown_with_the_digits_that_matter(nanos, shown):
    assert usd_display(nanos) == shown


# --- Emails whose task was never enqueued ----------------------------------------------------


@pytest.mark.django_db
def test_a_receipt_and_a_low_balance_email_lost_to_a_down_broker_are_sent_by_the_sweep_once(
        reloading_account, mailoutbox, eager_tasks, monkeypatch,  # noqa: F811
        django_capture_on_commit_callbacks):
    from kombu.exceptions import OperationalError

    account = reloading_account

    def broker_down(*args, **kwargs):
        raise OperationalError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")

    # Given the broker is down while a purchase and a crossing commit
    with monkeypatch.context() as down:
        for task in (tasks.purchase_receipt_email, tasks.low_balance_email,
                     tasks.auto_reload_for_crossing):
            down.setattr(task, "delay", broker_down)
        with django_capture_on_commit_callbacks(execute=True):
            purchase, _ = purchase_record(
                account_id=account.id, amount_nanos=20 * USD, reference="INV-LOST-1",
                kind=Purchase.Kind.INVOICE, cash_book=Book.EXTERNAL_CASH, now=T0)
        with django_capture_on_commit_callbacks(execute=True):
            credit_debit(account_id=account.id, amount_nanos=23 * USD, reason="use", now=T0)
    [event] = LowBalanceEvent.objects.filter(account=account)
    # the money moved, and no email went out
    assert Purchase.objects.filter(id=purchase.id).exists()
    assert mailoutbox == [] and not EmailNotice.objects.exists()

    # When the sweep runs before they are 5 minutes late: nothing yet (the task may still
    # be on its way)
    with time_machine.travel(T0 + timedelta(minutes=4), tick=False):
        assert tasks.money_emails_unsent_send.apply().result == 0
    assert mailoutbox == []

    # Then once they are late, each goes out once, however often the sweep runs
    with time_machine.travel(T0 + timedelta(minutes=6), tick=False):
        assert tasks.money_emails_unsent_send.apply().result == 2
        assert tasks.money_emails_unsent_send.apply().result == 0
    assert sorted(email.subject for email in mailoutbox) == [
        "Your balance is below $3.00",
        "Your receipt: $20.00 of credit, 2 Mar 2026, 09:30 UTC"]
    assert {(n.kind, n.subject_key) for n in EmailNotice.objects.all()} == {
        ("purchase_receipt", str(purchase.id)), ("low_balance", str(event.id))}

    # And things older than 3 days are left alone (the sweep is not a backfill)
    with time_machine.travel(T0 + timedelta(days=4), tick=False):
        EmailNotice.objects.all().delete()
        assert tasks.money_emails_unsent_send.apply().result == 0


@pytest.mark.django_db
def test_the_sweep_leaves_emails_that_went_out_on_time(mailoutbox, eager_tasks,  # noqa: F811
                                                        django_capture_on_commit_callbacks):
    account = AccountFactory()
    with django_capture_on_commit_callbacks(execute=True):
        purchase_record(account_id=account.id, amount_nanos=10 * USD, reference="INV-OK-1",
                        kind=Purchase.Kind.INVOICE, cash_book=Book.EXTERNAL_CASH, now=T0)
    assert len(mailoutbox) == 1

    with time_machine.travel(T0 + timedelta(hours=1), tick=False):
        assert tasks.money_emails_unsent_send.apply().result == 0
    assert len(mailoutbox) == 1
