from django.core.management.base import BaseCommand, CommandError

from accounts.models import User
from console.demo import staff_totp_device_ensure, totp_code_now, totp_secret_base32


class Command(BaseCommand):
    help = ("Enrol a staff member's TOTP device (if they have none) and print its secret, "
            "its otpauth:// URL for an authenticator app, and the current code.")

    def add_arguments(self, parser):
        parser.add_argument("email")

    def handle(self, *args, email, **options):
        user = User.objects.filter(email__iexact=email, is_staff=True).first()
        if user is None:
            raise CommandError(f"No staff user {email}.")
        device = staff_totp_device_ensure(user=user)
        self.stdout.write(f"secret:     {totp_secret_base32(device)}")
        self.stdout.write(f"otpauth:    {device.config_url}")
        self.stdout.write(f"code now:   {totp_code_now(device)}")
