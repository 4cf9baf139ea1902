"""Demo staff for `manage.py demo_seed`: the superuser and one member of each role, each
with a TOTP device whose secret is printed so the console can be tried at once."""

import base64

from django.contrib.auth.models import Group
from django_otp.oath import TOTP
from django_otp.plugins.otp_totp.models import TOTPDevice

from accounts.models import User


def staff_totp_device_ensure(*, user: User) -> TOTPDevice:
    device = TOTPDevice.objects.filter(user=user, name="demo").first()
    if device is None:
        device = TOTPDevice.objects.create(user=user, name="demo", confirmed=True)
    return device


def totp_secret_base32(device: TOTPDevice) -> str:
    return base64.b32encode(device.bin_key).decode()


def totp_code_now(device: TOTPDevice) -> str:
    totp = TOTP(device.bin_key, device.step, device.t0, device.digits, device.drift)
    return f"{totp.token():0{device.digits}d}"


def demo_staff_ensure(*, admin_email: str, password: str) -> list[str]:
    """Returns the lines to print: who can log in, and how to get their codes."""
    lines = []
    people = [(admin_email, None), ("support@example.com", "Support"),
              ("finance@example.com", "Finance")]
    for email, group in people:
        user = User.objects.filter(email=email).first()
        if user is None:
            user = (User.objects.create_superuser(email, password) if group is None
                    else User.objects.create_user(email, password, is_staff=True))
        if group is not None:
            user.groups.add(Group.objects.get(name=group))
        device = staff_totp_device_ensure(user=user)
        role = group or "superuser"
        lines.append(f"  {role + ':':<17}{email} / {password}, TOTP secret "
                     f"{totp_secret_base32(device)} (code now: {totp_code_now(device)})")
    lines.append("                   (add the secret to an authenticator app, or print a "
                 "fresh code: python manage.py console_totp EMAIL)")
    return lines
