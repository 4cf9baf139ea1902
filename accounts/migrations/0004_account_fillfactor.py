"""The account row is updated by every authorize and settle. Leaving half of each page
free lets PostgreSQL keep those updates on the same page (HOT updates, no index writes)."""

from django.db import migrations


def forward(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute("ALTER TABLE accounts_account SET (fillfactor = 50)")


def backward(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute("ALTER TABLE accounts_account RESET (fillfactor)")


class Migration(migrations.Migration):
    dependencies = [("accounts", "0003_auto_reload_threshold")]
    operations = [migrations.RunPython(forward, backward)]
