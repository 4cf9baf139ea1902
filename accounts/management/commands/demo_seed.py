import os
from decimal import Decimal

from allauth.account.models import EmailAddress
from django.conf import settings
from django.core.management.base import BaseCommand

from accounts.services import api_key_create
from console.demo import demo_staff_ensure
from dashboard.demo import demo_customer_seed, payg_price_configure
from metering.catalog import model_upsert

USD = 10**9
DEMO_MODELS = [
    {"model_id": "Qwen/Qwen2.5-7B-Instruct", "kind": "open", "params_b": Decimal(7)},
    {"model_id": "meta-llama/Llama-3.1-8B-Instruct", "kind": "open", "params_b": Decimal(8)},
    {"model_id": "meta-llama/Llama-3-70b", "kind": "open", "params_b": Decimal(70)},
    {"model_id": "openai/gpt-4o", "kind": "closed", "provider": "openai",
     "input_nanos_per_mtok": 2_500_000_000, "output_nanos_per_mtok": 10 * USD},
    {"model_id": "anthropic/claude-sonnet-4", "kind": "closed", "provider": "anthropic",
     "input_nanos_per_mtok": 3 * USD, "output_nanos_per_mtok": 15 * USD},
]


class Command(BaseCommand):
    help = "Load demo data: a staff user, a customer with credit and a key, some models."

    def add_arguments(self, parser):
        parser.add_argument("--admin-password", default="admin-demo-password")
        parser.add_argument("--customer-password", default="demo-customer-password")

    def handle(self, *args, admin_password, customer_password, **options):
        for model in DEMO_MODELS:
            model_upsert(**model)

        staff_lines = demo_staff_ensure(admin_email="admin@example.com",
                                        password=admin_password)

        payg_price_configure(price_id=os.environ.get("DEMO_PAYG_STRIPE_PRICE_ID", ""))
        demo, key = demo_customer_seed(email="demo@example.com", password=customer_password)
        account = demo.account
        # The demo customer's email counts as verified: the dashboard's login lets it in.
        EmailAddress.objects.update_or_create(
            user=account.user, email=account.user.email,
            defaults={"verified": True, "primary": True})
        _, management_key = api_key_create(account_id=account.id, name="demo management",
                                           kind="management")

        token = (settings.BILLING_INTERNAL_TOKENS or ["<set BILLING_INTERNAL_TOKENS>"])[0]
        self.stdout.write(self.style.SUCCESS("Demo data loaded."))
        self.stdout.write("  staff console:   /admin/  (password, then the authenticator code)")
        for line in staff_lines:
            self.stdout.write(line)
        self.stdout.write(f"  demo customer:   / (the dashboard)  demo@example.com / "
                          f"{customer_password}  (account {account.id})")
        self.stdout.write(f"  demo API key:    {key}")
        self.stdout.write(f"                   (GET /api/v1/credits with 'Authorization: {key}')")
        self.stdout.write(f"  management key:  {management_key}")
        self.stdout.write("                   (the money calls of /api/v1/: cards, purchases, "
                          "auto-reload...)")
        self.stdout.write(f"  service token:   {token}")
        self.stdout.write("                   (the internal API, /internal/v1/, documented at "
                          "/internal/v1/docs)")
