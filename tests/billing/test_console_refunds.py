"""The console's Stripe actions on localstripe: Finance refunds a purchase from the
account page (the claw-back is one balanced transaction, the audit row has the reason),
and resumes a paused auto-reload; Support may do neither."""

import pytest
from django.db import transaction
from django.test import Client
from django.urls import reverse

from accounts.models import Account
from billing.locks import billing_profile_lock
from billing.low_balance import auto_reload_pause_locked
from billing.models import BillingProfile, LedgerEntry, Purchase, Reversal
from console.models import StaffAction
from tests.console.support import otp_login, staff_user

USD = 10**9

pytestmark = pytest.mark.usefixtures("stripe_live")


def _action(account_id, action, target=None):
    url = reverse("admin:console_account_action", args=[account_id, action])
    return f"{url}?target={target}" if target else url


def test_finance_refunds_from_the_account_page_support_cannot(make_customer, save_card,
                                                               stripe_client):
    customer = make_customer()
    save_card(customer)
    bought = customer.api.post("/api/v1/purchases", {"amount_usd": "20.00"}, format="json")
    purchase = Purchase.objects.get(id=bought.data["purchase"]["purchase_id"])
    support = otp_login(Client(), staff_user("s@example.com", group="Support"))
    finance = otp_login(Client(), staff_user("f@example.com", group="Finance"))

    refused = support.post(_action(customer.id, "refund", purchase.id),
                           {"amount_usd": "", "reason": "asked"})
    assert refused.status_code == 403
    assert not Reversal.objects.exists()

    page = finance.get(reverse("admin:accounts_account_change", args=[customer.id]))
    assert b"Refund\xe2\x80\xa6" in page.content
    bad = finance.post(_action(customer.id, "refund", purchase.id),
                       {"amount_usd": "25.00", "reason": "too much"})
    assert bad.status_code == 200 and b"at most 20.000000000 USD" in bad.content
    assert not Reversal.objects.exists()

    done = finance.post(_action(customer.id, "refund", purchase.id),
                        {"amount_usd": "7.50", "reason": "charged twice, ticket 91"})

    assert done.status_code == 302
    reversal = Reversal.objects.get()
    legs = list(LedgerEntry.objects.filter(transaction=reversal.ledger_transaction)
                .values_list("book", "amount_nanos"))
    assert sum(amount for _, amount in legs) == 0
    assert sorted(legs) == [("customer_credit", -7_500_000_000), ("stripe_cash", 7_500_000_000)]
    assert Account.objects.get(id=customer.id).balance_nanos == 13_500_000_000
    audit = StaffAction.objects.get()
    assert (audit.kind, audit.reason) == ("purchase_refund", "charged twice, ticket 91")
    assert (audit.before["purchase_refunded_usd"], audit.after["purchase_refunded_usd"]) == (
        "0.000000000", "7.500000000")
    assert [r.amount for r in stripe_client.v1.refunds.list(
        params={"payment_intent": purchase.reference}).data] == [750]


def test_support_resumes_a_paused_auto_reload(make_customer, save_card):
    customer = make_customer()
    save_card(customer)
    customer.api.post("/api/v1/purchases", {"amount_usd": "10.00"}, format="json")
    assert customer.api.put("/api/v1/auto-reload", {"enabled": True},
                            format="json").status_code == 200
    with transaction.atomic():
        profile = billing_profile_lock(account_id=customer.id)
        auto_reload_pause_locked(profile=profile, reason="card_declined: test", now=profile
                                  .updated_at)
    assert Account.objects.get(id=customer.id).auto_reload_threshold_nanos is None
    support = otp_login(Client(), staff_user("s2@example.com", group="Support"))

    response = support.post(_action(customer.id, "resume_auto_reload"),
                            {"reason": "customer updated their card"})

    assert response.status_code == 302
    profile = BillingProfile.objects.get(account_id=customer.id)
    assert profile.auto_reload_paused_at is None and profile.auto_reload_enabled
    assert Account.objects.get(id=customer.id).auto_reload_threshold_nanos == 3 * USD
    audit = StaffAction.objects.get()
    assert audit.before["auto_reload"].startswith("paused") and audit.after["auto_reload"] == "on"
    again = support.post(_action(customer.id, "resume_auto_reload"), {"reason": "again"})
    assert again.status_code == 200 and b"not paused" in again.content
