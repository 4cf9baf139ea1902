"""The staff console (Django admin): every page opens with data in it, staff edit the
catalog and the run path prices with the edit, and money records stay read-only."""

import pytest
from django.contrib import admin
from django.urls import reverse

from accounts.models import User
from billing.models import CreditLot
from console.demo import staff_totp_device_ensure
from metering.models import SizeClass
from tests.console.support import otp_login
from tests.runpath import MODEL_7B, authorize_body, customer_create

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("catalog", "fresh_caches")]


@pytest.fixture
def staff_client(client):
    staff = User.objects.create_superuser(email="staff@example.com", password="pw-staff-1")
    staff_totp_device_ensure(user=staff)
    return otp_login(client, staff)


def test_every_admin_list_and_detail_page_opens(staff_client, api):
    # Given an account that has run a model (lots, ledger, holds, usage exist).
    customer = customer_create(purchased_usd=25)
    hold = api.post("/internal/v1/authorize", authorize_body(customer), format="json").json()
    api.post(f"/internal/v1/holds/{hold['hold_id']}/settle", {"inference_seconds": 2},
             format="json")

    # When staff open every list, and the first row of each.
    for model in admin.site._registry:
        meta = model._meta
        changelist = reverse(f"admin:{meta.app_label}_{meta.model_name}_changelist")
        response = staff_client.get(changelist)
        # Then each answers.
        assert response.status_code == 200, changelist
        first = model.objects.first()
        if first is not None:
            detail = reverse(f"admin:{meta.app_label}_{meta.model_name}_change",
                             args=[first.pk])
            assert staff_client.get(detail).status_code == 200, detail


def test_a_size_class_price_edited_by_staff_prices_the_next_run(staff_client, api):
    # Given the 7B class at $0.000072 a second.
    size_class = SizeClass.objects.get(name="7B")
    customer = customer_create(purchased_usd=25)

    # When staff raise it to $0.0001 a second in the admin.
    response = staff_client.post(
        reverse("admin:metering_sizeclass_change", args=[size_class.pk]),
        {"name": "7B", "max_params_b": size_class.max_params_b,
         "nanos_per_second": "0.0001", "concurrency_weight": size_class.concurrency_weight,
         "change_reason": "price review"})
    assert response.status_code == 302

    # Then a 10 s run is charged at the new price.
    hold = api.post("/internal/v1/authorize", authorize_body(customer, MODEL_7B),
                    format="json").json()
    result = api.post(f"/internal/v1/holds/{hold['hold_id']}/settle",
                      {"inference_seconds": 10}, format="json").json()
    assert result["charged_usd"] == "0.001000000"


def test_a_bad_price_is_a_form_error_and_changes_nothing(staff_client):
    size_class = SizeClass.objects.get(name="7B")
    before = SizeClass.objects.values().get(pk=size_class.pk)

    response = staff_client.post(
        reverse("admin:metering_sizeclass_change", args=[size_class.pk]),
        {"name": "7B", "max_params_b": size_class.max_params_b,
         "nanos_per_second": "-5", "concurrency_weight": 0, "change_reason": "typo test"})

    assert response.status_code == 200
    errors = response.context["adminform"].form.errors
    assert set(errors) == {"nanos_per_second", "concurrency_weight"}
    assert SizeClass.objects.values().get(pk=size_class.pk) == before


def test_money_records_cannot_be_edited_or_deleted_in_the_admin(staff_client):
    customer = customer_create(purchased_usd=25)
    lot = CreditLot.objects.filter(account_id=customer.account_id).first()
    before = CreditLot.objects.values().get(pk=lot.pk)

    change = reverse("admin:billing_creditlot_change", args=[lot.pk])
    staff_client.post(change, {"remaining_nanos": 10**12})
    delete = reverse("admin:billing_creditlot_delete", args=[lot.pk])

    assert staff_client.post(delete, {"post": "yes"}).status_code == 403
    assert staff_client.get(reverse("admin:billing_creditlot_add")).status_code == 403
    assert CreditLot.objects.values().get(pk=lot.pk) == before


def test_staff_log_in_at_the_console_and_customers_at_the_root(client):
    console = client.get("/admin/", follow=True)
    assert console.redirect_chain[0][0].startswith("/admin/login/")
    assert "Log in" in console.content.decode()

    root = client.get("/")
    assert root.status_code == 200
    assert 'action="/account/login/"' in root.content.decode()
