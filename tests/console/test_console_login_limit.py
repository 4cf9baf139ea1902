"""Failed staff sign-ins are limited per address: past the limit the console refuses
even the right password and code, so neither factor can be guessed."""

from datetime import UTC, datetime

import pytest
from django.core.cache import cache
from django.test import Client

from console.demo import totp_code_now
from tests.console.support import staff_user

pytestmark = pytest.mark.django_db


def sign_in(client: Client, email: str, password: str, code: str):
    return client.post("/admin/login/?next=/admin/", {
        "username": email, "password": password, "otp_token": code})


@pytest.mark.figure(12, tried="staff console sign-in: 10 wrong passwords from one address, "
                    "then the right password and code; the same from another address",
                    counts="refused after 10 failures, signed in from elsewhere")
def test_failed_staff_sign_ins_are_limited_per_address(settings, time_machine):
    # The limit counts per minute: the clock stands still so that the attempts share one.
    time_machine.move_to(datetime.now(UTC).replace(second=1), tick=False)
    cache.clear()
    settings.STAFF_LOGIN_FAILURES_PER_MINUTE = 10
    staff = staff_user("guessed-staff@example.com", group="Support")
    device = staff.totpdevice_set.get()
    guesser = Client(REMOTE_ADDR="203.0.113.50")

    for n in range(10):
        response = sign_in(guesser, staff.email, f"wrong-{n}", "000000")
        assert response.status_code == 200
        assert "Too many failed sign-in attempts" not in response.content.decode()

    refused = sign_in(guesser, staff.email, "pw-staff-1", totp_code_now(device))
    assert refused.status_code == 200
    assert "Too many failed sign-in attempts" in refused.content.decode()
    assert "_auth_user_id" not in guesser.session

    colleague = Client(REMOTE_ADDR="198.51.100.50")
    signed_in = sign_in(colleague, staff.email, "pw-staff-1", totp_code_now(device))
    assert signed_in.status_code == 302, signed_in.content.decode()[:500]
    assert colleague.session["_auth_user_id"] == str(staff.pk)
    cache.clear()
