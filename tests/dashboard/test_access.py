"""One account never sees or changes another's objects, and every form needs CSRF."""

import csv
import io

import pytest
from django.test import Client

from tests.dashboard.conftest import PASSWORD, run_settled
from tests.runpath import MODEL_CLOSED
from tests.support import account_state

pytestmark = pytest.mark.django_db


@pytest.mark.figure(12, tried="dashboard: revoke or see another account's key by its id")
def test_another_accounts_key_cannot_be_revoked_or_seen(customer, other_customer):
    url = f"/dashboard/keys/{other_customer.key_id}/revoke/"
    before = account_state(other_customer.account_id)

    assert customer.client.get(url).status_code == 404
    assert customer.client.post(url).status_code == 404

    assert account_state(other_customer.account_id) == before
    assert other_customer.api_key().revoked_at is None
    listing = customer.client.get("/dashboard/keys/").content.decode()
    assert other_customer.api_key().prefix not in listing


def test_a_key_id_that_is_not_a_key_is_not_found(customer):
    assert customer.client.get(
        "/dashboard/keys/00000000-0000-0000-0000-000000000000/revoke/").status_code == 404
    assert customer.client.get("/dashboard/keys/not-a-uuid/revoke/").status_code == 404


@pytest.mark.figure(12, tried="dashboard: usage pages and CSV never show another account's rows")
def test_usage_never_shows_another_accounts_rows(customer, other_customer):
    run_settled(customer, seconds=10)
    run_settled(other_customer, model_id=MODEL_CLOSED)

    page = customer.client.get("/dashboard/usage/").content.decode()
    rows = list(csv.DictReader(io.StringIO(
        b"".join(customer.client.get("/dashboard/usage.csv").streaming_content).decode())))

    assert MODEL_CLOSED not in page.split("By day and model")[1]
    assert [r["kind"] for r in rows] == ["open"]


@pytest.mark.figure(12, tried="dashboard: usage filtered by another account's key id")
def test_filtering_usage_by_another_accounts_key_is_refused(customer, other_customer):
    run_settled(other_customer, seconds=10)
    foreign = {"key": str(other_customer.key_id)}

    page = customer.client.get("/dashboard/usage/", foreign)
    export = customer.client.get("/dashboard/usage.csv", foreign)

    assert page.status_code == 400
    assert "Select a valid choice" in page.content.decode()
    assert export.status_code == 400
    assert not export.streaming


def test_another_accounts_key_is_not_a_filter_choice(customer, other_customer):
    page = customer.client.get("/dashboard/usage/").content.decode()
    assert str(other_customer.key_id) not in page
    assert str(customer.key_id) in page


@pytest.mark.parametrize(("path", "data"), [
    ("/dashboard/keys/", {"name": "no token"}),
    ("KEY_REVOKE", {}),
    ("/account/logout/", {}),
    ("/account/password/change/", {"oldpassword": PASSWORD, "password1": "x-new-pass-99a",
                                   "password2": "x-new-pass-99a"}),
])
def test_every_form_needs_its_csrf_token(customer, path, data):
    client = Client(enforce_csrf_checks=True)
    client.force_login(customer.account().user)
    if path == "KEY_REVOKE":
        path = f"/dashboard/keys/{customer.key_id}/revoke/"
    before = account_state(customer.account_id)

    response = client.post(path, data)

    assert response.status_code == 403
    assert account_state(customer.account_id) == before
    user = customer.account().user
    assert user.check_password(PASSWORD)


def test_login_and_sign_up_need_their_csrf_token(db):
    client = Client(enforce_csrf_checks=True)
    assert client.post("/account/login/", {"login": "a@example.com",
                                           "password": "x"}).status_code == 403
    assert client.post("/account/signup/", {"email": "b@example.com", "password1": PASSWORD,
                                            "password2": PASSWORD}).status_code == 403


def test_pages_carry_csrf_tokens_in_their_forms(customer):
    for path in ("/dashboard/keys/", f"/dashboard/keys/{customer.key_id}/revoke/",
                 "/account/password/change/"):
        assert 'name="csrfmiddlewaretoken"' in customer.client.get(path).content.decode()
