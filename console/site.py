"""The staff console's admin site: a second factor (TOTP, django-otp) at login, and the
console's own header and account search on the index."""

from django.contrib.admin.forms import AdminAuthenticationForm
from django_otp import devices_for_user
from django_otp.admin import OTPAdminAuthenticationForm, OTPAdminSite


class ConsoleLoginForm(OTPAdminAuthenticationForm):
    """Email, password and the 6-digit code from the staff member's authenticator app.
    With a single device (the usual case) the device picker is not needed."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["otp_token"].label = "Authenticator code"
        self.fields["otp_token"].widget.attrs.update(
            {"autocomplete": "one-time-code", "inputmode": "numeric", "pattern": "[0-9]*"})

    def clean(self):
        self.cleaned_data = AdminAuthenticationForm.clean(self)
        user = self.get_user()
        if user is not None and not self.cleaned_data.get("otp_device"):
            devices = list(devices_for_user(user))
            if len(devices) == 1:
                self.cleaned_data["otp_device"] = devices[0].persistent_id
        self.clean_otp(user)
        return self.cleaned_data


class ConsoleAdminSite(OTPAdminSite):
    site_header = "Billing console"
    site_title = "Billing console"
    index_title = "Staff console"
    site_url = None  # the service has no public pages besides the console
    login_form = ConsoleLoginForm
    login_template = "admin/console_login.html"

    def __init__(self, name="admin"):
        super().__init__(name)
