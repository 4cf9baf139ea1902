"""Staff actions in the console: each goes through the product's services, writes a
balanced ledger transaction where money moves and an audit row with its reason; roles
are enforced on the server; bad input is an error next to its field and changes nothing."""

import pytest
from django.db import DatabaseError, transaction
from django.urls import reverse

from accounts.models import Account, ApiKey
from billing.models import LedgerEntry, LedgerTransaction, StripeEvent
from console.models import StaffAction
from metering.models import Hold, SizeClass
from ratelimits.models import Tier
from tests.runpath import USD, authorize_body, customer_create, world_snapshot

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("catalog")]


def action_url(account_id, action: str, target=None) -> str:
    url = reverse("admin:console_account_action", args=[account_id, action])
    return f"{url}?target={target}" if target else url


def txn_legs(txn: LedgerTransaction) -> list[tuple[str, int]]:
    return sorted(LedgerEntry.objects.filter(transaction=txn)
                  .values_list("book", "amount_nanos"))


def test_support_grants_credit_with_a_reason_one_balanced_transaction_and_an_audit_row(
        support_client, support):
    customer = customer_create(purchased_usd=25)  # $25 bought + $1 free
    form = support_client.get(action_url(customer.account_id, "grant"))
    assert form.status_code == 200 and b"Grant credit" in form.content

    response = support_client.post(action_url(customer.account_id, "grant"),
                                   {"amount_usd": "12.50", "reason": "ticket #4411 outage"})

    assert response.status_code == 302
    assert customer.account().balance_nanos == 38_500_000_000
    txn = LedgerTransaction.objects.filter(account_id=customer.account_id).latest("id")
    assert txn.kind == "grant"
    legs = txn_legs(txn)
    assert sum(amount for _, amount in legs) == 0
    assert legs == [("customer_credit", 12_500_000_000), ("promotional", -12_500_000_000)]
    audit = StaffAction.objects.get()
    assert (audit.actor, audit.kind, audit.reason) == (support, "credit_grant",
                                                        "ticket #4411 outage")
    assert (audit.before["balance_usd"], audit.after["balance_usd"]) == (
        "26.000000000", "38.500000000")
    page = support_client.get(reverse("admin:accounts_account_change",
                                      args=[customer.account_id]), follow=True)
    assert b"$38.50" in page.content and b"ticket #4411 outage" in page.content


def test_a_negative_grant_or_a_missing_reason_is_an_error_next_to_the_field(support_client):
    customer = customer_create(purchased_usd=25)
    before = world_snapshot(customer.account_id)

    negative = support_client.post(action_url(customer.account_id, "grant"),
                                   {"amount_usd": "-5", "reason": "oops"})
    no_reason = support_client.post(action_url(customer.account_id, "grant"),
                                    {"amount_usd": "5.00", "reason": "  "})
    garbage = support_client.post(action_url(customer.account_id, "grant"),
                                  {"amount_usd": "five", "reason": "x"})

    assert negative.status_code == no_reason.status_code == garbage.status_code == 200
    assert negative.context["form"].errors == {"amount_usd": ["Must not be negative."]}
    assert list(no_reason.context["form"].errors) == ["reason"]
    assert list(garbage.context["form"].errors) == ["amount_usd"]
    assert b'id="id_amount_usd_errors"' in negative.content
    assert world_snapshot(customer.account_id) == before
    assert not StaffAction.objects.exists()


def test_support_cannot_grant_beyond_the_limit_refund_adjust_or_edit_prices(
        support_client, settings):
    settings.STAFF_SUPPORT_GRANT_LIMIT_USD = 50
    customer = customer_create(purchased_usd=25)
    purchase = customer.account().purchases.get()
    size_class = SizeClass.objects.get(name="7B")
    before = world_snapshot(customer.account_id)
    price_before = SizeClass.objects.values().get(pk=size_class.pk)

    too_much = support_client.post(action_url(customer.account_id, "grant"),
                                   {"amount_usd": "50.01", "reason": "goodwill"})
    refund_form = support_client.get(action_url(customer.account_id, "refund", purchase.id))
    refund = support_client.post(action_url(customer.account_id, "refund", purchase.id),
                                 {"amount_usd": "", "reason": "asked"})
    adjust = support_client.post(action_url(customer.account_id, "adjust"),
                                 {"amount_usd": "-5", "reason": "fix"})
    price = support_client.post(
        reverse("admin:metering_sizeclass_change", args=[size_class.pk]),
        {"name": "7B", "max_params_b": size_class.max_params_b, "nanos_per_second": "0",
         "concurrency_weight": 1, "change_reason": "free for all"})

    assert [too_much.status_code, refund_form.status_code, refund.status_code,
            adjust.status_code, price.status_code] == [403, 403, 403, 403, 403]
    assert world_snapshot(customer.account_id) == before
    assert SizeClass.objects.values().get(pk=size_class.pk) == price_before
    assert not StaffAction.objects.exists()
    # The account page offers Support only what Support may do.
    page = support_client.get(reverse("admin:accounts_account_change",
                                      args=[customer.account_id]))
    assert b"Grant credit" in page.content
    assert b"Adjust credit" not in page.content and b"Refund\xe2\x80\xa6" not in page.content


def test_finance_adjusts_down_to_what_the_account_can_give_back_and_no_further(
        finance_client, finance, api):
    customer = customer_create(purchased_usd=10)  # $11 with the free grant
    hold = api.post("/internal/v1/authorize", authorize_body(customer),
                    format="json").json()
    account = customer.account()
    available = account.balance_nanos - account.held_nanos
    before = world_snapshot(customer.account_id)

    too_far = finance_client.post(action_url(customer.account_id, "adjust"),
                                  {"amount_usd": f"-{available / USD + 1:.2f}",
                                   "reason": "double credit"})
    assert too_far.status_code == 200
    assert "amount_usd" in too_far.context["form"].errors
    assert world_snapshot(customer.account_id) == before

    down = finance_client.post(action_url(customer.account_id, "adjust"),
                               {"amount_usd": "-3", "reason": "invoice INV-9 credited twice"})
    up = finance_client.post(action_url(customer.account_id, "adjust"),
                             {"amount_usd": "1.25", "reason": "rounding fix"})

    assert down.status_code == up.status_code == 302
    assert customer.account().balance_nanos == account.balance_nanos - 3 * USD + 1_250_000_000
    debit, credit = LedgerTransaction.objects.filter(
        account_id=customer.account_id, kind="adjustment").order_by("id")
    assert sum(a for _, a in txn_legs(debit)) == 0 and ("staff_adjustment", 3 * USD) in \
        txn_legs(debit)
    assert txn_legs(credit) == [("customer_credit", 1_250_000_000),
                                ("staff_adjustment", -1_250_000_000)]
    assert [a.reason for a in StaffAction.objects.order_by("id")] == [
        "invoice INV-9 credited twice", "rounding fix"]
    assert Hold.objects.get(id=hold["hold_id"]).status == "open"  # the hold's money stayed


def test_suspend_reinstate_force_release_and_revoke_go_through_the_run_path(
        support_client, api):
    customer = customer_create(purchased_usd=25)
    hold = api.post("/internal/v1/authorize", authorize_body(customer), format="json").json()
    assert customer.account().held_nanos > 0

    released = support_client.post(action_url(customer.account_id, "release_hold",
                                              hold["hold_id"]), {"reason": "gateway crashed"})
    assert released.status_code == 302
    account = customer.account()
    assert (account.held_nanos, account.slots_in_use) == (0, 0)
    assert Hold.objects.get(id=hold["hold_id"]).status == "released"
    settle = api.post(f"/internal/v1/holds/{hold['hold_id']}/settle",
                      {"inference_seconds": 2}, format="json")
    assert settle.status_code == 409

    assert support_client.post(action_url(customer.account_id, "suspend"),
                               {"reason": "card testing"}).status_code == 302
    refused = api.post("/internal/v1/authorize", authorize_body(customer), format="json")
    assert refused.status_code == 403 and refused.json()["code"] == "account_suspended"
    assert support_client.post(action_url(customer.account_id, "reinstate"),
                               {"reason": "verified by phone"}).status_code == 302
    assert customer.account().status == Account.Status.ACTIVE

    assert support_client.post(action_url(customer.account_id, "revoke_key",
                                          customer.key_id),
                               {"reason": "key leaked on GitHub"}).status_code == 302
    assert ApiKey.objects.get(id=customer.key_id).revoked_at is not None
    assert api.post("/internal/v1/authorize", authorize_body(customer),
                    format="json").status_code == 401

    assert list(StaffAction.objects.order_by("id").values_list("kind", "reason")) == [
        ("hold_release", "gateway crashed"), ("account_suspend", "card testing"),
        ("account_reinstate", "verified by phone"), ("key_revoke", "key leaked on GitHub")]


def test_the_ledger_cannot_be_edited_or_deleted_from_the_console(admin_client):
    customer = customer_create(purchased_usd=25)
    txn = LedgerTransaction.objects.filter(account_id=customer.account_id).first()
    before = (LedgerTransaction.objects.count(), LedgerEntry.objects.count(), txn_legs(txn))

    change = admin_client.post(reverse("admin:billing_ledgertransaction_change",
                                       args=[txn.pk]), {"memo": "edited", "kind": "grant"})
    delete = admin_client.post(reverse("admin:billing_ledgertransaction_delete",
                                       args=[txn.pk]), {"post": "yes"})
    add = admin_client.get(reverse("admin:billing_ledgertransaction_add"))
    bulk_delete = admin_client.post(reverse("admin:billing_ledgertransaction_changelist"),
                                    {"action": "delete_selected",
                                     "_selected_action": [txn.pk], "post": "yes"})

    assert [delete.status_code, add.status_code] == [403, 403]
    assert change.status_code in (302, 403)  # a read-only page: nothing is saved
    assert bulk_delete.status_code == 200  # no such action: the list is shown again
    txn.refresh_from_db()
    assert txn.memo != "edited"
    assert (LedgerTransaction.objects.count(), LedgerEntry.objects.count(),
            txn_legs(txn)) == before


def test_the_audit_log_is_append_only_and_searchable(support_client, admin_client):
    customer = customer_create(purchased_usd=25)
    support_client.post(action_url(customer.account_id, "grant"),
                        {"amount_usd": "5", "reason": "ticket #777 apology"})
    audit = StaffAction.objects.get()

    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic():
        StaffAction.objects.filter(id=audit.id).update(reason="nothing happened")
    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic():
        StaffAction.objects.filter(id=audit.id).delete()
    delete = admin_client.post(reverse("admin:console_staffaction_delete", args=[audit.id]),
                               {"post": "yes"})
    assert delete.status_code == 403
    assert StaffAction.objects.get().reason == "ticket #777 apology"

    changelist = reverse("admin:console_staffaction_changelist")
    found = support_client.get(changelist, {"q": "#777"})
    missing = support_client.get(changelist, {"q": "no-such-reason"})
    assert b"ticket #777 apology" in found.content and b"support-agent@example.com" in \
        found.content
    assert b"ticket #777 apology" not in missing.content
    detail = support_client.get(reverse("admin:console_staffaction_change", args=[audit.id]))
    assert b"31.00" in detail.content and b"26.00" in detail.content  # before and after


def test_an_account_is_found_by_email_id_key_prefix_or_stripe_customer(support_client):
    from billing.models import BillingProfile

    customer = customer_create(purchased_usd=25)
    other = customer_create(purchased_usd=3)
    BillingProfile.objects.create(account_id=customer.account_id,
                                  stripe_customer_id="cus_TestFind123")
    account = customer.account()
    prefix = ApiKey.objects.get(id=customer.key_id).prefix
    changelist = reverse("admin:accounts_account_changelist")

    for term in (account.user.email, account.user.email.split("@")[0][:12].upper(),
                 str(account.id), prefix, customer.key, "cus_TestFind123"):
        response = support_client.get(changelist, {"q": term})
        results = list(response.context["cl"].result_list)
        assert results == [account], term
    assert other.account().user.email.encode() not in support_client.get(
        changelist, {"q": prefix}).content
    # Lists show money in dollars.
    listing = support_client.get(changelist, {"q": str(account.id)})
    assert b"$26.00" in listing.content


def test_tier_and_price_tables_are_validated_and_each_edit_is_audited(finance_client):
    tier = Tier.objects.order_by("min_purchased_nanos")[1]  # $3: 7B, 4 slots
    lowest = Tier.objects.order_by("min_purchased_nanos")[0]
    url = reverse("admin:ratelimits_tier_change", args=[tier.pk])
    before = list(Tier.objects.values())

    falling = finance_client.post(url, {"name": tier.name, "min_purchased_nanos": "3.00",
                                        "max_params_b": tier.max_params_b, "concurrency": 0,
                                        "change_reason": "test"})
    gap = finance_client.post(reverse("admin:ratelimits_tier_change", args=[lowest.pk]),
                              {"name": lowest.name, "min_purchased_nanos": "1.00",
                               "max_params_b": lowest.max_params_b,
                               "concurrency": lowest.concurrency, "change_reason": "test"})
    negative = finance_client.post(url, {"name": tier.name, "min_purchased_nanos": "-3",
                                         "max_params_b": tier.max_params_b,
                                         "concurrency": tier.concurrency,
                                         "change_reason": "test"})
    no_reason = finance_client.post(url, {"name": tier.name, "min_purchased_nanos": "3.00",
                                          "max_params_b": tier.max_params_b,
                                          "concurrency": 5})

    assert falling.status_code == gap.status_code == negative.status_code == 200
    assert "rise together" in str(falling.context["adminform"].form.non_field_errors())
    assert "must start at $0" in str(gap.context["adminform"].form.errors)
    assert "min_purchased_nanos" in negative.context["adminform"].form.errors
    assert "change_reason" in no_reason.context["adminform"].form.errors
    assert list(Tier.objects.values()) == before

    ok = finance_client.post(url, {"name": tier.name, "min_purchased_nanos": "3.00",
                                   "max_params_b": "15", "concurrency": tier.concurrency,
                                   "change_reason": "15B models for starters"})
    assert ok.status_code == 302
    assert Tier.objects.get(pk=tier.pk).max_params_b == 15
    audit = StaffAction.objects.get()
    assert (audit.kind, audit.reason, audit.before, audit.after) == (
        "table_edit", "15B models for starters", {"max_params_b": "7.000"},
        {"max_params_b": "15"})


def test_a_failed_stripe_event_is_shown_and_reprocessed_by_finance_only(
        finance_client, support_client):
    from django.utils import timezone

    event = StripeEvent.objects.create(
        stripe_id="evt_test_failed_1", type="customer.created",
        payload={"id": "evt_test_failed_1", "type": "customer.created",
                 "data": {"object": {"id": "cus_1"}}},
        created_at=timezone.now(), attempts=1, last_error="OperationalError('timeout')")
    listing = support_client.get(reverse("admin:billing_stripeevent_changelist"))
    assert b"failed" in listing.content and b"OperationalError" in listing.content
    url = reverse("admin:console_stripe_event_reprocess", args=[event.pk])
    assert support_client.post(url, {"reason": "db back"}).status_code == 403

    response = finance_client.post(url, {"reason": "database was down at 03:00"})

    assert response.status_code == 302
    event.refresh_from_db()
    assert event.processed_at is not None and event.outcome.startswith("ignored")
    audit = StaffAction.objects.get()
    assert (audit.kind, audit.reason) == ("stripe_event_reprocess",
                                          "database was down at 03:00")
