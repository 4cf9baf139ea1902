from decimal import Decimal

from django.db import migrations

# DESIGN.md defaults: price per second by size class, and the slots a run takes.
SIZE_CLASSES = [
    ("7B", Decimal(7), 72_000, 1),
    ("15B", Decimal(15), 108_000, 2),
    ("35B", Decimal(35), 144_000, 2),
    ("70B", Decimal(70), 216_000, 3),
    ("120B", Decimal(120), 360_000, 5),
]


def seed(apps, schema_editor):
    SizeClass = apps.get_model("metering", "SizeClass")
    PricingPolicy = apps.get_model("metering", "PricingPolicy")
    for name, max_params_b, nanos_per_second, weight in SIZE_CLASSES:
        SizeClass.objects.get_or_create(name=name, defaults={
            "max_params_b": max_params_b, "nanos_per_second": nanos_per_second,
            "concurrency_weight": weight})
    PricingPolicy.objects.get_or_create(id=1)


class Migration(migrations.Migration):
    dependencies = [("metering", "0001_initial")]
    operations = [migrations.RunPython(seed, migrations.RunPython.noop)]
