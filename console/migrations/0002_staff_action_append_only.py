"""On PostgreSQL the audit log is append-only in the database itself, like the ledger
(billing/migrations/0003_ledger_triggers.py): UPDATE and DELETE are refused."""

from django.db import migrations

FORWARD = """
CREATE FUNCTION console_staff_action_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the staff audit log is append-only: % on % refused', TG_OP, TG_TABLE_NAME
        USING ERRCODE = 'restrict_violation';
END $$;

CREATE TRIGGER staff_action_append_only
BEFORE UPDATE OR DELETE ON console_staffaction
FOR EACH ROW EXECUTE FUNCTION console_staff_action_append_only();
"""

BACKWARD = """
DROP TRIGGER IF EXISTS staff_action_append_only ON console_staffaction;
DROP FUNCTION IF EXISTS console_staff_action_append_only();
"""


def forward(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(FORWARD, params=None)


def backward(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(BACKWARD, params=None)


class Migration(migrations.Migration):
    dependencies = [("console", "0001_initial")]
    operations = [migrations.RunPython(forward, backward)]
