"""The free plan: $1 of free credit, refreshed every 28 days; and the periodic tasks that
expire lots and refresh free grants."""

from datetime import timedelta

import pytest

from billing import tasks
from billing.credit import credit_debit, credit_grant, free_grant_ensure
from billing.models import CreditLot, LedgerTransaction
from config.celery import app as celery_app
from tests.factories import AccountFactory
from tests.support import (
    BASE,
    T0,
    USD,
    assert_books_agree,
    db_counts,
    run_concurrently,
)

US = timedelta(microseconds=1)
CYCLE = timedelta(days=28)


def free_lots(account) -> list[tuple]:
    return list(CreditLot.objects.filter(account=account, source="free_grant")
                .order_by("granted_at")
                .values_list("granted_at", "expires_at", "amount_nanos", "remaining_nanos"))


@pytest.fixture
def eager_tasks():
    """Run Celery tasks in-process, as a worker would run them."""
    previous = celery_app.conf.task_always_eager
    celery_app.conf.task_always_eager = True
    yield
    celery_app.conf.task_always_eager = previous


@pytest.mark.django_db
class TestFreeGrant:
    def test_a_new_account_holds_its_free_grant(self, api):
        response = api.post(f"{BASE}/accounts", {"email": "new@example.com"}, format="json")

        assert response.status_code == 201
        body = response.json()
        assert (body["plan"], body["balance_usd"]) == ("free", "1.000000000")
        account_id = body["account_id"]
        lot = CreditLot.objects.get(account_id=account_id)
        assert (lot.source, lot.amount_nanos, lot.expires_at - lot.granted_at) == (
            "free_grant", USD, CYCLE)
        assert_books_agree(account_id, USD)

    def test_ensuring_twice_in_a_cycle_grants_once(self):
        account = AccountFactory(now=T0)
        before = db_counts()

        for now in (T0, T0 + timedelta(days=3), T0 + CYCLE - US):
            lot = free_grant_ensure(account_id=account.id, now=now)
            assert (lot.granted_at, lot.expires_at) == (T0, T0 + CYCLE)

        assert db_counts() == before
        assert_books_agree(account.id, USD)

    def test_a_spent_free_grant_is_not_topped_up_within_its_cycle(self):
        account = AccountFactory(now=T0)
        credit_debit(account_id=account.id, amount_nanos=USD, reason="spent", now=T0)

        free_grant_ensure(account_id=account.id, now=T0 + timedelta(days=27))

        assert free_lots(account) == [(T0, T0 + CYCLE, USD, 0)]
        assert_books_agree(account.id, 0)

    def test_after_28_days_a_new_grant_comes_and_the_old_one_expires(self):
        # Given $0.40 of the first grant spent.
        account = AccountFactory(now=T0)
        credit_debit(account_id=account.id, amount_nanos=400_000_000, reason="use", now=T0)

        # When the grant is ensured at the end of the first cycle.
        free_grant_ensure(account_id=account.id, now=T0 + CYCLE)

        # Then the $0.60 left of the old grant expired and a fresh $1 arrived.
        assert free_lots(account) == [
            (T0, T0 + CYCLE, USD, 0),
            (T0 + CYCLE, T0 + 2 * CYCLE, USD, USD),
        ]
        old = CreditLot.objects.get(account=account, granted_at=T0)
        assert old.expired_at == T0 + CYCLE
        expiry = LedgerTransaction.objects.get(account=account, kind="expiry")
        assert sorted(expiry.entries.values_list("book", "amount_nanos")) == [
            ("customer_credit", -600_000_000), ("expired_credit", 600_000_000)]
        account.refresh_from_db()
        assert account.credit_valid_until == T0 + 2 * CYCLE
        assert_books_agree(account.id, USD)

    def test_a_grant_missed_for_cycles_is_given_for_the_current_cycle_only(self):
        account = AccountFactory(now=T0)

        free_grant_ensure(account_id=account.id, now=T0 + 3 * CYCLE + timedelta(days=2))

        assert free_lots(account) == [
            (T0, T0 + CYCLE, USD, 0),
            (T0 + 3 * CYCLE, T0 + 4 * CYCLE, USD, USD),
        ]
        assert_books_agree(account.id, USD)

    def test_an_account_on_a_paid_plan_gets_no_free_grant(self):
        account = AccountFactory(now=T0)
        type(account).objects.filter(id=account.id).update(plan_id="payg")
        before = db_counts()

        assert free_grant_ensure(account_id=account.id, now=T0 + CYCLE - US) is None

        assert db_counts() == before


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_free_grant_ensure_run_concurrently_grants_once():
    # Given an account at the start of its second cycle.
    account = AccountFactory(now=T0)
    now = T0 + CYCLE

    # When six workers ensure its grant at once.
    results = run_concurrently([lambda: free_grant_ensure(account_id=account.id, now=now)] * 6)

    # Then they all name the same new lot, and it was granted once.
    assert all(isinstance(r, CreditLot) for r in results), results
    assert len({r.id for r in results}) == 1
    assert free_lots(account) == [(T0, T0 + CYCLE, USD, 0), (now, now + CYCLE, USD, USD)]
    assert LedgerTransaction.objects.filter(account=account, kind="expiry").count() == 1
    assert_books_agree(account.id, USD)


@pytest.mark.django_db
@pytest.mark.usefixtures("eager_tasks")
class TestPeriodicTasks:
    def test_expiry_task_records_due_lots_of_due_accounts_only(self, time_machine):
        # Given one account whose $2 grant expires at T0+5d, and one with nothing due.
        time_machine.move_to(T0, tick=False)
        due = AccountFactory()
        credit_grant(account_id=due.id, amount_nanos=2 * USD, reason="short",
                     expires_at=T0 + timedelta(days=5))
        not_due = AccountFactory()

        time_machine.move_to(T0 + timedelta(days=5) - US, tick=False)
        assert tasks.credit_lots_expire_due.delay().get() == 0

        time_machine.move_to(T0 + timedelta(days=5), tick=False)
        before = db_counts()
        assert tasks.credit_lots_expire_due.delay().get() == 1

        assert CreditLot.objects.get(account=due, reason="short").remaining_nanos == 0
        assert db_counts()["ledger_transactions"] == before["ledger_transactions"] + 1
        assert_books_agree(due.id, USD)
        assert_books_agree(not_due.id, USD)

        # A rerun finds nothing more to do.
        after = db_counts()
        assert tasks.credit_lots_expire_due.delay().get() == 0
        tasks.credit_lots_expire_for_account.delay(str(due.id)).get()
        assert db_counts() == after

    def test_free_grant_task_refreshes_accounts_whose_grant_ran_out(self, time_machine):
        time_machine.move_to(T0, tick=False)
        account = AccountFactory()
        time_machine.move_to(T0 + timedelta(days=1), tick=False)
        younger = AccountFactory()

        # Before the first cycle ends, nobody is due.
        time_machine.move_to(T0 + CYCLE - US, tick=False)
        before = db_counts()
        assert tasks.free_grants_refresh_due.delay().get() == 0
        assert db_counts() == before

        # At its end, the first account is, and gets its new grant; the expiry task then
        # has nothing left to do for it.
        time_machine.move_to(T0 + CYCLE, tick=False)
        assert tasks.free_grants_refresh_due.delay().get() == 1
        assert free_lots(account) == [(T0, T0 + CYCLE, USD, 0),
                                      (T0 + CYCLE, T0 + 2 * CYCLE, USD, USD)]
        assert len(free_lots(younger)) == 1
        assert_books_agree(account.id, USD)

        # A rerun, and a rerun of the per-account task, change nothing.
        after = db_counts()
        assert tasks.free_grants_refresh_due.delay().get() == 0
        tasks.free_grant_refresh_for_account.delay(str(account.id)).get()
        assert db_counts() == after
