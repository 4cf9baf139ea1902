"""The run path's batch statements: metering_authorize_batch and metering_settle_batch
(group commit, metering/group_commit.py). Their text comes from
metering/group_commit_sql.py, built on metering/sql.py's and metering/settle_sql.py's."""

from django.db import migrations

from metering import group_commit_sql


# The functions this migration creates, by the first 16 hex digits of the SHA-256 of their
# body: tests/metering/test_sql_functions_current.py fails when the code's text moves on
# without a later migration that creates the function again.
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
