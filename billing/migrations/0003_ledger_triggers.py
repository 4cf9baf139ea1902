"""On PostgreSQL the database itself keeps the ledger honest: a transaction whose entries
do not sum to zero cannot commit, and ledger rows cannot be updated or deleted."""

from django.db import migrations

FORWARD = """
CREATE FUNCTION billing_ledger_entry_balanced() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    total numeric;
BEGIN
    SELECT COALESCE(SUM(amount_nanos), 0) INTO total
    FROM billing_ledgerentry WHERE transaction_id = NEW.transaction_id;
    IF total <> 0 THEN
        RAISE EXCEPTION 'ledger transaction % does not balance: its entries sum to %',
            NEW.transaction_id, total USING ERRCODE = 'check_violation';
    END IF;
    RETURN NULL;
END $$;

CREATE CONSTRAINT TRIGGER ledger_entry_balanced
AFTER INSERT ON billing_ledgerentry
DEFERRABLE INITIALLY DEFERRED
FOR EACH ROW EXECUTE FUNCTION billing_ledger_entry_balanced();

CREATE FUNCTION billing_ledger_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the ledger is append-only: % on % refused', TG_OP, TG_TABLE_NAME
        USING ERRCODE = 'restrict_violation';
END $$;

CREATE TRIGGER ledger_entry_append_only
BEFORE UPDATE OR DELETE ON billing_ledgerentry
FOR EACH ROW EXECUTE FUNCTION billing_ledger_append_only();

CREATE TRIGGER ledger_transaction_append_only
BEFORE UPDATE OR DELETE ON billing_ledgertransaction
FOR EACH ROW EXECUTE FUNCTION billing_ledger_append_only();
"""

BACKWARD = """
DROP TRIGGER IF EXISTS ledger_transaction_append_only ON billing_ledgertransaction;
DROP TRIGGER IF EXISTS ledger_entry_append_only ON billing_ledgerentry;
DROP FUNCTION IF EXISTS billing_ledger_append_only();
DROP TRIGGER IF EXISTS ledger_entry_balanced ON billing_ledgerentry;
DROP FUNCTION IF EXISTS billing_ledger_entry_balanced();
"""


def forward(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(FORWARD, params=None)


def backward(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(BACKWARD, params=None)


class Migration(migrations.Migration):
    dependencies = [("billing", "0002_seed_plans")]
    operations = [migrations.RunPython(forward, backward)]
