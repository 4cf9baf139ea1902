"""The front door: sign-up opens the billing account with its free grant, email
verification, log in and out, password reset and change, throttled failed logins."""

import re

import pytest
from allauth.account.models import EmailAddress
from django.test import Client

from accounts.models import Account, User
from billing.models import CreditLot
from tests.dashboard.conftest import PASSWORD, customer_signed_in
from tests.support import db_counts

pytestmark = pytest.mark.django_db

NEW_PASSWORD = "another-long-passphrase-42"


def _link(message) -> str:
    return re.search(r"http://testserver(/\S+)", message.body).group(1)


def _sign_up(client, email="new.customer@example.com", password=PASSWORD, password2=None):
    return client.post("/account/signup/", {"email": email, "password1": password,
                                            "password2": password2 or password})


def test_root_is_the_customer_login_with_sign_up_and_reset_links(client):
    response = client.get("/")

    body = response.content.decode()
    assert response.status_code == 200
    assert 'action="/account/login/"' in body
    assert 'href="/account/signup/"' in body
    assert 'href="/account/password/reset/"' in body
    assert '<label for="id_login">' in body


def test_sign_up_opens_the_account_with_its_free_grant_and_sends_a_verification_link(
        client, mailoutbox):
    response = _sign_up(client, email="New.Customer@Example.com")

    assert response.status_code == 302
    user = User.objects.get(email="new.customer@example.com")
    assert user.check_password(PASSWORD)
    account = Account.objects.get(user=user)
    free = CreditLot.objects.get(account=account, source=CreditLot.Source.FREE_GRANT)
    assert account.balance_nanos == free.amount_nanos == 10**9
    assert len(mailoutbox) == 1
    assert mailoutbox[0].to == ["new.customer@example.com"]
    # Unverified: the overview is not reachable yet.
    assert client.get("/dashboard/").status_code == 302


def test_the_emailed_link_verifies_and_signs_in(client, mailoutbox):
    _sign_up(client)
    link = _link(mailoutbox[0])

    assert client.get(link).status_code == 200
    response = client.post(link, follow=True)

    assert EmailAddress.objects.get(email="new.customer@example.com").verified
    assert response.redirect_chain[-1][0] == "/dashboard/"
    assert "Balance" in response.content.decode()


def test_bad_sign_up_shows_the_error_next_to_the_field_and_opens_nothing(client, mailoutbox):
    existing = customer_signed_in()
    before = db_counts()

    mismatch = _sign_up(client, password2="something-else-entirely-9")
    duplicate = _sign_up(client, email=existing.email.upper())
    short = _sign_up(client, password="short")
    bad_email = _sign_up(client, email="not-an-email")

    for response in (mismatch, short, bad_email):
        assert response.status_code == 200
        assert 'class="field has-error"' in response.content.decode()
    assert "You must type the same password each time" in mismatch.content.decode()
    # An address already signed up is not revealed to whoever types it: the page reads
    # as a sign-up, and the owner is told by email instead.
    assert duplicate.status_code == 302
    assert [m.to for m in mailoutbox] == [[existing.email]]
    assert db_counts() == before


def test_log_in_and_log_out(customer):
    client = Client()
    response = client.post("/account/login/", {"login": customer.email,
                                                "password": PASSWORD})
    assert response.status_code == 302
    assert response["Location"] == "/dashboard/"
    assert client.get("/").status_code == 302  # signed in: the front door leads inside

    logout = client.post("/account/logout/")
    assert logout.status_code == 302
    assert client.get("/dashboard/").status_code == 302
    assert client.get("/dashboard/")["Location"].startswith("/account/login/")


@pytest.mark.figure(12, tried="dashboard log-in: 5 wrong passwords, then the right one",
                    counts="throttled (allauth's limits): not signed in")
def test_wrong_password_says_so_and_failed_logins_are_throttled(customer):
    client = Client()
    for _ in range(5):
        response = client.post("/account/login/", {"login": customer.email,
                                                    "password": "wrong-password"})
        assert response.status_code == 200
        assert "not correct" in response.content.decode()

    throttled = client.post("/account/login/", {"login": customer.email,
                                                 "password": PASSWORD})
    assert throttled.status_code in (200, 429)
    assert "_auth_user_id" not in client.session
    assert "Too many failed login attempts" in throttled.content.decode()


def test_password_reset_by_email(customer, mailoutbox):
    client = Client()
    response = client.post("/account/password/reset/", {"email": customer.email})
    assert response.status_code == 302
    assert len(mailoutbox) == 1
    link = _link(mailoutbox[0])

    form = client.get(link, follow=True)
    action = form.redirect_chain[-1][0] if form.redirect_chain else link
    done = client.post(action, {"password1": NEW_PASSWORD, "password2": NEW_PASSWORD})

    assert done.status_code == 302
    user = customer.account().user
    user.refresh_from_db()
    assert user.check_password(NEW_PASSWORD)


def test_change_password_checks_the_current_one(customer):
    user = customer.account().user
    wrong = customer.client.post("/account/password/change/", {
        "oldpassword": "not-it", "password1": NEW_PASSWORD, "password2": NEW_PASSWORD})
    assert wrong.status_code == 200
    assert 'class="field has-error"' in wrong.content.decode()
    user.refresh_from_db()
    assert user.check_password(PASSWORD)

    right = customer.client.post("/account/password/change/", {
        "oldpassword": PASSWORD, "password1": NEW_PASSWORD, "password2": NEW_PASSWORD})
    assert right.status_code == 302
    user.refresh_from_db()
    assert user.check_password(NEW_PASSWORD)


def test_two_factor_authentication_page_is_reachable(customer):
    response = customer.client.get("/account/2fa/")
    assert response.status_code == 200
    assert "Authenticator App" in response.content.decode()


def test_staff_without_an_account_are_sent_to_the_console(client):
    staff = User.objects.create_superuser("staff@example.com", PASSWORD)
    client.force_login(staff)

    assert client.get("/")["Location"] == "/admin/"
    assert client.get("/dashboard/")["Location"] == "/admin/"
