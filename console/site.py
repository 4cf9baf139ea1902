"""The staff console's admin site: a second factor (TOTP, django-otp) at login, and the
console's own header and account search on the index."""

import redis
from django.conf import settings
from django.contrib.admin.forms import AdminAuthenticationForm
from django.core.exceptions import ValidationError
from django_otp import devices_for_user
from django_otp.admin import OTPAdminAuthenticationForm, OTPAdminSite
from django_ratelimit.core import get_usage


class ConsoleLoginForm(OTPAdminAuthenticationForm):
    """Email, password and the 6-digit code from the staff member's authenticator app.
    With a single device (the usual case) the device picker is not needed."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["otp_token"].label = "Authenticator code"
        self.fields["otp_token"].widget.attrs.update(
            {"autocomplete": "one-time-code", "inputmode": "numeric", "pattern": "[0-9]*"})

    def clean(self):
        # Failed sign-ins from one address are limited: past the limit every attempt is
        # refused until the minute ends, the right password and code included, so neither
        # factor can be guessed (django-otp throttles the code per device; this covers the
        # password, which the form checks first).
        if self.failed_attempts(increment=False):
            raise ValidationError(self.TOO_MANY, code="too_many_attempts")
        try:
            self.cleaned_data = AdminAuthenticationForm.clean(self)
            user = self.get_user()
            if user is not None and not self.cleaned_data.get("otp_device"):
                devices = list(devices_for_user(user))
                if len(devices) == 1:
                    self.cleaned_data["otp_device"] = devices[0].persistent_id
            self.clean_otp(user)
        except ValidationError:
            self.failed_attempts(increment=True)
            raise
        return self.cleaned_data

    TOO_MANY = "Too many failed sign-in attempts from this address. Try again in a minute."

    def failed_attempts(self, *, increment: bool) -> bool:
        """Count (or read) this address's failed sign-ins; True at the limit. With the
        cache down the limit is not applied (the second factor still is)."""
        if self.request is None:
            return False
        try:
            usage = get_usage(self.request, group="console-login-failures",
                              key=lambda group, request: request.META.get("REMOTE_ADDR")
                              or "unknown", increment=increment,
                              rate=f"{settings.STAFF_LOGIN_FAILURES_PER_MINUTE}/m")
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError):
            return False
        return usage is not None and usage["count"] >= usage["limit"]


class ConsoleAdminSite(OTPAdminSite):
    site_header = "Billing console"
    site_title = "Billing console"
    index_title = "Staff console"
    site_url = None  # the service has no public pages besides the console
    login_form = ConsoleLoginForm
    login_template = "admin/console_login.html"

    def __init__(self, name="admin"):
        super().__init__(name)
