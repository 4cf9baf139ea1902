"""The price moves out of metering_settle into functions of its own (metering/pricing_sql.py,
the twin of metering/pricing.py), and the settle calls them: for databases that ran 0006
before its text came from those modules."""

from django.db import migrations

from metering import pricing_sql, settle_sql


def forward(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(pricing_sql.CREATE, params=None)
        schema_editor.execute(settle_sql.CREATE, params=None)


class Migration(migrations.Migration):
    dependencies = [("metering", "0006_settle_function")]
    operations = [migrations.RunPython(forward, migrations.RunPython.noop)]
