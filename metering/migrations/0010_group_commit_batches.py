"""The run path's batch statements: metering_authorize_batch and metering_settle_batch
(group commit, metering/group_commit.py). Their text comes from
metering/group_commit_sql.py, built on metering/sql.py's and metering/settle_sql.py's."""

from django.db import migrations

from metering import group_commit_sql


# What this migration creates: tests/metering/test_sql_functions_current.py.
CREATES = {
    "metering_authorize_batch": "504923f38993d74d",
}


def forward(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(group_commit_sql.AUTHORIZE_CREATE, params=None)
        schema_editor.execute(group_commit_sql.SETTLE_CREATE, params=None)


def backward(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(group_commit_sql.AUTHORIZE_DROP, params=None)
        schema_editor.execute(group_commit_sql.SETTLE_DROP, params=None)


class Migration(migrations.Migration):
    dependencies = [("metering", "0009_settle_units_key_spend")]
    operations = [migrations.RunPython(forward, backward)]
