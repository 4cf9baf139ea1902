from decimal import Decimal

from django.db import migrations

USD = 10**9
# DESIGN.md defaults: credits purchased in the last 4 weeks -> largest open model, slots.
TIERS = [
    ("Tier 0", 0, Decimal(7), 1),
    ("Tier 1", 3 * USD, Decimal(7), 4),
    ("Tier 2", 10 * USD, Decimal(35), 4),
    ("Tier 3", 25 * USD, Decimal(70), 10),
    ("Tier 4", 50 * USD, Decimal(120), 20),
    ("Tier 5", 100 * USD, Decimal(120), 40),
    ("Tier 6", 500 * USD, Decimal(120), 200),
    ("Tier 7", 1_000 * USD, Decimal(120), 400),
]


def seed(apps, schema_editor):
    Tier = apps.get_model("ratelimits", "Tier")
    for name, min_purchased, max_params_b, concurrency in TIERS:
        Tier.objects.get_or_create(min_purchased_nanos=min_purchased, defaults={
            "name": name, "max_params_b": max_params_b, "concurrency": concurrency})


class Migration(migrations.Migration):
    dependencies = [("ratelimits", "0001_initial")]
    operations = [migrations.RunPython(seed, migrations.RunPython.noop)]
