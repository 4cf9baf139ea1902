from django.db import migrations

USD = 10**9
# DESIGN.md defaults. Free: $1 of credit refreshed every 4 weeks, closed models at 10
# requests/s. Pay-as-you-go: $3 a month, $5 of credit with each paid month.
PLANS = [
    {"code": "free", "name": "Free", "monthly_price_nanos": 0, "credit_grant_nanos": 1 * USD,
     "free_grant_interval_days": 28, "closed_requests_per_second": 10},
    {"code": "payg", "name": "Pay-as-you-go", "monthly_price_nanos": 3 * USD,
     "credit_grant_nanos": 5 * USD, "free_grant_interval_days": None,
     "closed_requests_per_second": None},
]


def seed(apps, schema_editor):
    Plan = apps.get_model("billing", "Plan")
    for plan in PLANS:
        Plan.objects.get_or_create(code=plan["code"], defaults=plan)


class Migration(migrations.Migration):
    dependencies = [("billing", "0001_initial")]
    operations = [migrations.RunPython(seed, migrations.RunPython.noop)]
