"""Staff users and console clients for the tests: a user of each role with a TOTP
device, signed in with both factors (the session is marked verified by that device, as
django-otp's login does)."""

from django.contrib.auth.models import Group
from django.test import Client
from django_otp import DEVICE_ID_SESSION_KEY

from accounts.models import User
from console.demo import staff_totp_device_ensure


def staff_user(email: str, *, group: str | None = None, superuser: bool = False) -> User:
    if superuser:
        user = User.objects.create_superuser(email=email, password="pw-staff-1")
    else:
        user = User.objects.create_user(email=email, password="pw-staff-1", is_staff=True)
    if group:
        user.groups.add(Group.objects.get(name=group))
    staff_totp_device_ensure(user=user)
    return user


def otp_login(client: Client, user: User) -> Client:
    client.force_login(user)
    session = client.session
    session[DEVICE_ID_SESSION_KEY] = user.totpdevice_set.get().persistent_id
    session.save()
    return client
