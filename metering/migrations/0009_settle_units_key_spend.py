"""metering_settle takes closed models' units (images, seconds, requests) and keeps the
key spend counters (ratelimits/key_limits.py); its row type grows, so the old function is
dropped first. Both texts come from metering/pricing_sql.py and metering/settle_sql.py."""

from django.db import migrations

from metering import pricing_sql, settle_sql


# What this migration creates: tests/metering/test_sql_functions_current.py.
CREATES = {
    "metering_billed_seconds": "007a9f56079543ed",
    "metering_closed_charge": "e8f8025b06b9e78b",
    "metering_token_cost_micro": "764678c5dba456a5",
    "metering_unit_cost_micro": "075ca348afda0c42",
}


def forward(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(settle_sql.DROP_BEFORE_UNITS, params=None)
        schema_editor.execute(pricing_sql.CREATE, params=None)
        schema_editor.execute(settle_sql.CREATE, params=None)


class Migration(migrations.Migration):
    dependencies = [
        ("metering", "0008_unit_prices_key_spend"),
        ("ratelimits", "0003_key_spend"),
        ("accounts", "0006_apikey_spend_limit"),
    ]
    operations = [migrations.RunPython(forward, migrations.RunPython.noop)]
