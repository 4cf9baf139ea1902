"""Fewer writes per run: the hold's and the usage record's references to the account, and
the usage record's to its hold, are no longer foreign-key constraints (each insert of the
run path looked up and share-locked the hot account row, or the hold, and wrote a WAL
record for it; the ids come from the rows the same statement locks and updates, and
accounts and holds are never deleted). metering_settle reads the account's held amount
with its lock instead of again (metering/settle_sql.py)."""

import django.db.models.deletion
from django.db import migrations, models

from metering import settle_sql


# What this migration creates: tests/metering/test_sql_functions_current.py.
CREATES = {
    "metering_settle": "e857a0c19913a0ff",
}


def settle_function_create(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(settle_sql.CREATE, params=None)


class Migration(migrations.Migration):
    dependencies = [
        ("accounts", "0006_apikey_spend_limit"),
        ("metering", "0011_hold_key_spend_index"),
    ]

    operations = [
        migrations.AlterField(
            model_name="hold",
            name="account",
            field=models.ForeignKey(db_constraint=False, db_index=False,
                                    on_delete=django.db.models.deletion.PROTECT,
                                    related_name="holds", to="accounts.account"),
        ),
        migrations.AlterField(
            model_name="usagerecord",
            name="account",
            field=models.ForeignKey(db_constraint=False, db_index=False,
                                    on_delete=django.db.models.deletion.PROTECT,
                                    related_name="usage_records", to="accounts.account"),
        ),
        migrations.AlterField(
            model_name="usagerecord",
            name="hold",
            field=models.OneToOneField(db_constraint=False,
                                       on_delete=django.db.models.deletion.PROTECT,
                                       related_name="usage", to="metering.hold"),
        ),
        migrations.RunPython(settle_function_create, migrations.RunPython.noop),
    ]
