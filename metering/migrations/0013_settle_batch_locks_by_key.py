"""metering_settle_batch takes its accounts' locks by primary-key lookups, hold by hold,
instead of one set-based statement whose cached plan could scan every hold
(metering/group_commit_sql.py)."""

from django.db import migrations

from metering import group_commit_sql


# What this migration creates: tests/metering/test_sql_functions_current.py.
CREATES = {
    "metering_settle_batch": "142c33e656b9b422",
}


def forward(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(group_commit_sql.SETTLE_CREATE, params=None)


class Migration(migrations.Migration):
    dependencies = [("metering", "0012_lean_settle")]
    operations = [migrations.RunPython(forward, migrations.RunPython.noop)]
