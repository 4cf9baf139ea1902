"""The ledger's references to the account are no longer foreign-key constraints: every
settle inserts a transaction and its entries while it holds the account row's lock, and
each constraint looked the hot row up and share-locked it once more per insert. Accounts
are never deleted (on_delete=PROTECT still guards the ORM)."""

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("accounts", "0006_apikey_spend_limit"),
        ("billing", "0008_ledger_checkpoint"),
    ]

    operations = [
        migrations.AlterField(
            model_name="ledgerentry",
            name="account",
            field=models.ForeignKey(db_constraint=False, db_index=False, null=True,
                                    on_delete=django.db.models.deletion.PROTECT,
                                    related_name="+", to="accounts.account"),
        ),
        migrations.AlterField(
            model_name="ledgertransaction",
            name="account",
            field=models.ForeignKey(db_constraint=False, db_index=False, null=True,
                                    on_delete=django.db.models.deletion.PROTECT,
                                    related_name="ledger_transactions",
                                    to="accounts.account"),
        ),
    ]
