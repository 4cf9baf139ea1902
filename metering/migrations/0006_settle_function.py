"""The settle as a database function: on PostgreSQL a settle is then one statement in one
round trip (metering/settle_sql.py holds its text and says why; its ORM twin for other
databases is metering/settle.py's _hold_settle_portable)."""

from django.db import migrations

from metering import pricing_sql, settle_sql


def forward(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(pricing_sql.CREATE, params=None)
        schema_editor.execute(settle_sql.CREATE, params=None)


def backward(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(settle_sql.DROP, params=None)
        schema_editor.execute(pricing_sql.DROP, params=None)


class Migration(migrations.Migration):
    dependencies = [
        ("metering", "0005_hold_settle_outcome"),
        ("billing", "0007_lot_index_without_remaining"),
        ("accounts", "0004_account_fillfactor"),
    ]
    operations = [migrations.RunPython(forward, backward)]
