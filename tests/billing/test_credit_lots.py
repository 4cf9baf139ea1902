"""Credit lots: spending takes the soonest-expiring lot first, and expired credit is never
spendable, not even for the microsecond before its expiry is recorded."""

from datetime import timedelta

import pytest
from django.db import transaction
from django.test import Client

from accounts.locks import account_lock
from accounts.models import FAR_FUTURE, Account
from billing.credit import (
    account_balance_apply,
    credit_consume,
    credit_debit,
    credit_grant,
    credit_lots_expire_due,
    purchase_record,
)
from billing.errors import InsufficientCredit
from billing.ledger import Book, Kind, Leg, ledger_post
from billing.models import CreditLot, LedgerTransaction, Purchase
from tests.conftest import INTERNAL_TOKEN
from tests.factories import AccountFactory
from tests.support import (
    BASE,
    T0,
    USD,
    account_state,
    assert_books_agree,
    db_counts,
    run_concurrently,
    usd,
)

pytestmark = pytest.mark.django_db

US = timedelta(microseconds=1)


def lot_remaining(account) -> dict:
    return {lot.reason or lot.source: lot.remaining_nanos
            for lot in CreditLot.objects.filter(account=account)}


@pytest.fixture
def account_with_four_lots():
    """Given an account opened at T0 (free $1, expiring T0+28d) that then got, in an order
    that is not their expiry order: a $5 purchase at T0+1h (expiring T0+28d+1h), a $2
    grant expiring T0+10d and a $3 grant expiring T0+3d."""
    account = AccountFactory(now=T0)
    purchase_record(account_id=account.id, amount_nanos=5 * USD, reference="INV-1",
                    kind=Purchase.Kind.INVOICE, now=T0 + timedelta(hours=1))
    credit_grant(account_id=account.id, amount_nanos=2 * USD, reason="ten days",
                 expires_at=T0 + timedelta(days=10), now=T0 + timedelta(hours=1))
    credit_grant(account_id=account.id, amount_nanos=3 * USD, reason="three days",
                 expires_at=T0 + timedelta(days=3), now=T0 + timedelta(hours=1))
    CreditLot.objects.filter(account=account, source="purchase").update(reason="purchase")
    CreditLot.objects.filter(account=account, source="free_grant").update(reason="free")
    assert_books_agree(account.id, 11 * USD)
    return account


def test_debit_burns_down_the_soonest_expiring_lot_first(account_with_four_lots):
    account = account_with_four_lots
    now = T0 + timedelta(hours=2)

    # When $4 is debited: the 3-day lot is emptied, then $1 comes from the 10-day lot.
    assert credit_debit(account_id=account.id, amount_nanos=4 * USD, reason="adj",
                        now=now) == 4 * USD
    assert lot_remaining(account) == {"three days": 0, "ten days": 1 * USD,
                                      "free": 1 * USD, "purchase": 5 * USD}
    assert_books_agree(account.id, 7 * USD)

    # When $2.50 more is debited: the 10-day lot, then the free grant (T0+28d), then the
    # purchase (T0+28d+1h), in that order.
    credit_debit(account_id=account.id, amount_nanos=usd("2.5"), reason="adj", now=now)
    assert lot_remaining(account) == {"three days": 0, "ten days": 0, "free": 0,
                                      "purchase": usd("4.5")}
    account.refresh_from_db()
    assert account.credit_valid_until == T0 + timedelta(days=28, hours=1)
    assert_books_agree(account.id, usd("4.5"))

    # The ledger names every lot touched, soonest-expiring first, in each debit.
    debits = LedgerTransaction.objects.filter(account=account, kind=Kind.ADJUSTMENT)
    legs = [[(e.lot.reason, e.amount_nanos) for e in t.entries.filter(book=Book.CUSTOMER_CREDIT)]
            for t in debits.order_by("id")]
    assert legs == [
        [("three days", -3 * USD), ("ten days", -1 * USD)],
        [("ten days", -1 * USD), ("free", -1 * USD), ("purchase", -usd("0.5"))],
    ]


def test_consume_inside_a_locked_transaction_takes_lots_in_expiry_order(
        account_with_four_lots):
    account = account_with_four_lots
    now = T0 + timedelta(hours=2)
    lots = {lot.reason: lot.id for lot in CreditLot.objects.filter(account=account)}

    # When $6.50 is consumed under the account's lock, posted and applied.
    with transaction.atomic():
        locked = account_lock(account_id=account.id)
        consumed = credit_consume(account=locked, amount_nanos=usd("6.5"), now=now)
        ledger_post(kind=Kind.ADJUSTMENT, account_id=locked.id, now=now, memo="test",
                    legs=[*consumed.legs, Leg(Book.STAFF_ADJUSTMENT, consumed.covered_nanos)])
        account_balance_apply(account=locked, balance_delta=-consumed.covered_nanos)

    # Then the legs run soonest-expiring first and stop at the amount.
    assert [(leg.lot_id, leg.amount_nanos) for leg in consumed.legs] == [
        (lots["three days"], -3 * USD), (lots["ten days"], -2 * USD),
        (lots["free"], -1 * USD), (lots["purchase"], -usd("0.5")),
    ]
    assert (consumed.covered_nanos, consumed.shortfall_nanos) == (usd("6.5"), 0)
    assert_books_agree(account.id, usd("4.5"))


def test_consume_reports_a_shortfall_and_skips_lots_past_expiry(account_with_four_lots):
    account = account_with_four_lots
    # Given a time past the 3-day lot's expiry, which no task has recorded yet.
    now = T0 + timedelta(days=3)

    with transaction.atomic():
        locked = account_lock(account_id=account.id)
        consumed = credit_consume(account=locked, amount_nanos=20 * USD, now=now)
        ledger_post(kind=Kind.ADJUSTMENT, account_id=locked.id, now=now, memo="test",
                    legs=[*consumed.legs, Leg(Book.STAFF_ADJUSTMENT, consumed.covered_nanos)])
        account_balance_apply(account=locked, balance_delta=-consumed.covered_nanos)

    # Then only the live $8 was taken; the expired $3 was not touched.
    assert (consumed.covered_nanos, consumed.shortfall_nanos) == (8 * USD, 12 * USD)
    assert lot_remaining(account) == {"three days": 3 * USD, "ten days": 0, "free": 0,
                                      "purchase": 0}
    assert_books_agree(account.id, 3 * USD)


def test_debit_beyond_the_available_credit_is_refused_and_writes_nothing(
        account_with_four_lots):
    account = account_with_four_lots
    before, state = db_counts(), account_state(account.id)

    with pytest.raises(InsufficientCredit):
        credit_debit(account_id=account.id, amount_nanos=11 * USD + 1, reason="too much",
                     now=T0 + timedelta(hours=2))

    assert db_counts() == before
    assert account_state(account.id) == state


# --- Expiry at the boundary ---------------------------------------------------------------

EXPIRY = T0 + timedelta(days=5)


@pytest.fixture
def account_with_expiring_lot():
    """Given an account opened at T0 (free $1 until T0+28d) with a $2 grant that expires
    at EXPIRY = T0+5d."""
    account = AccountFactory(now=T0)
    credit_grant(account_id=account.id, amount_nanos=2 * USD, reason="short",
                 expires_at=EXPIRY, now=T0)
    account.refresh_from_db()
    assert account.credit_valid_until == EXPIRY
    return account


@pytest.mark.figure(8, tried="a lot spent 1 microsecond before its expiry",
                    counts="all of it spendable")
def test_credit_is_spendable_one_microsecond_before_its_expiry(account_with_expiring_lot):
    account = account_with_expiring_lot

    spent = credit_debit(account_id=account.id, amount_nanos=3 * USD, reason="all of it",
                         now=EXPIRY - US)

    assert spent == 3 * USD
    assert_books_agree(account.id, 0)
    account.refresh_from_db()
    assert account.credit_valid_until == FAR_FUTURE


@pytest.mark.figure(8, tried="a lot spent at and 1 microsecond after its expiry, no task "
                    "run", counts="refused, nothing written; only live credit spent")
@pytest.mark.parametrize("offset", [timedelta(0), US], ids=["at", "after"])
def test_credit_is_not_spendable_at_or_after_its_expiry(account_with_expiring_lot, offset):
    account = account_with_expiring_lot
    before, state = db_counts(), account_state(account.id)

    # When all $3 is asked for at (or after) the expiry, no task having recorded it.
    with pytest.raises(InsufficientCredit):
        credit_debit(account_id=account.id, amount_nanos=3 * USD, reason="all of it",
                     now=EXPIRY + offset)
    # Then nothing was written (the refusal rolled back the expiry it found, too)...
    assert db_counts() == before
    assert account_state(account.id) == state

    # ...and only the $1 that is still live can be spent.
    assert credit_debit(account_id=account.id, amount_nanos=1 * USD, reason="the rest",
                        now=EXPIRY + offset) == 1 * USD
    assert_books_agree(account.id, 0)
    assert CreditLot.objects.get(account=account, reason="short").expired_at == EXPIRY + offset


def test_expire_due_does_nothing_one_microsecond_before(account_with_expiring_lot):
    account = account_with_expiring_lot
    before, state = db_counts(), account_state(account.id)

    assert credit_lots_expire_due(account_id=account.id, now=EXPIRY - US) == 0

    assert db_counts() == before
    assert account_state(account.id) == state


@pytest.mark.parametrize("offset", [timedelta(0), US], ids=["at", "after"])
def test_expire_due_records_the_expiry_at_and_after(account_with_expiring_lot, offset):
    account = account_with_expiring_lot
    now = EXPIRY + offset

    assert credit_lots_expire_due(account_id=account.id, now=now) == 2 * USD

    lot = CreditLot.objects.get(account=account, reason="short")
    assert (lot.remaining_nanos, lot.expired_at) == (0, now)
    account.refresh_from_db()
    assert account.balance_nanos == 1 * USD
    assert account.credit_valid_until == T0 + timedelta(days=28)  # the free grant's expiry
    expiry = LedgerTransaction.objects.get(account=account, kind=Kind.EXPIRY)
    assert sorted((e.book, e.amount_nanos) for e in expiry.entries.all()) == [
        (Book.CUSTOMER_CREDIT, -2 * USD), (Book.EXPIRED_CREDIT, 2 * USD)]
    assert_books_agree(account.id, 1 * USD)

    # A rerun is a no-op.
    counts = db_counts()
    assert credit_lots_expire_due(account_id=account.id, now=now + timedelta(hours=1)) == 0
    assert db_counts() == counts


def test_expiry_of_the_last_lot_leaves_no_valid_until(account_with_expiring_lot):
    account = account_with_expiring_lot
    # The free grant expires last, at T0+28d: then nothing is left to expire.
    assert credit_lots_expire_due(account_id=account.id, now=T0 + timedelta(days=28)) == 3 * USD
    account.refresh_from_db()
    assert (account.balance_nanos, account.credit_valid_until) == (0, FAR_FUTURE)
    assert_books_agree(account.id, 0)


def test_account_read_counts_only_unexpired_credit_before_expiry_is_recorded(
        account_with_expiring_lot, api, time_machine):
    account = account_with_expiring_lot
    url = f"{BASE}/accounts/{account.id}"

    time_machine.move_to(EXPIRY - US, tick=False)
    body = api.get(url).json()
    assert (body["balance_usd"], body["available_usd"]) == ("3.000000000", "3.000000000")

    # At the expiry, no task has recorded it yet: the row still says $3...
    time_machine.move_to(EXPIRY, tick=False)
    assert Account.objects.get(id=account.id).balance_nanos == 3 * USD
    # ...but the read shows only the live $1.
    body = api.get(url).json()
    assert (body["balance_usd"], body["available_usd"]) == ("1.000000000", "1.000000000")
    assert_books_agree(account.id, 1 * USD)


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_racing_reads_at_the_expiry_record_it_once(time_machine):
    # Given the $2 lot at its expiry, not yet recorded.
    time_machine.move_to(T0, tick=False)
    account = AccountFactory()
    credit_grant(account_id=account.id, amount_nanos=2 * USD, reason="short", expires_at=EXPIRY)
    time_machine.move_to(EXPIRY, tick=False)

    def read():
        client = Client(headers={"authorization": f"Bearer {INTERNAL_TOKEN}"})
        return client.get(f"{BASE}/accounts/{account.id}").json()["balance_usd"]

    # When six reads race, each on its own connection.
    balances = run_concurrently([read] * 6)

    # Then each shows only the live $1, and the expiry was recorded exactly once.
    assert balances == ["1.000000000"] * 6
    assert LedgerTransaction.objects.filter(account=account, kind=Kind.EXPIRY).count() == 1
    assert_books_agree(account.id, 1 * USD)
