"""The settle's write as a database function: on PostgreSQL a settle is then one
statement in one round trip, and the account's row lock is held only while the server
works. The same writes through the ORM, for other databases, are in metering/services.py
(_settle_post_portable); tests/metering/test_settle_paths.py proves the two agree."""

from django.db import migrations

CREATE = r"""
CREATE OR REPLACE FUNCTION metering_settle(
    p_hold_id uuid,
    p_status_before text,
    p_account_id uuid,
    p_key_id uuid,
    p_model_id text,
    p_kind text,
    p_byok boolean,
    p_now timestamptz,
    p_charge bigint,
    p_billed_seconds bigint,
    p_release_held bigint,
    p_release_slots integer,
    p_memo text,
    p_book_1 text,
    p_amount_1 bigint,
    p_book_2 text,
    p_amount_2 bigint,
    p_inference_seconds numeric,
    p_load_seconds numeric,
    p_input_tokens bigint,
    p_output_tokens bigint,
    p_provider_cost_nanos bigint,
    p_far_future timestamptz
) RETURNS TABLE (out_unpaid_nanos bigint, out_balance_after_nanos bigint,
                 out_available_after_nanos bigint, out_low_balance_event_id bigint)
LANGUAGE plpgsql AS $fn$
BEGIN
    -- Lock the account first: every write to its lots, holds and balance takes this lock,
    -- and the statement below starts after it is granted, so all it reads is current.
    PERFORM 1 FROM accounts_account WHERE id = p_account_id FOR UPDATE;
    RETURN QUERY
    WITH acct_now AS (
        SELECT held_nanos FROM accounts_account WHERE id = p_account_id
    ),
    live AS (
        SELECT id, remaining_nanos,
               SUM(remaining_nanos) OVER (ORDER BY expires_at, id) - remaining_nanos AS before
          FROM billing_creditlot
         WHERE account_id = p_account_id AND remaining_nanos > 0 AND expires_at > p_now
    ),
    take AS (
        SELECT id, LEAST(remaining_nanos, p_charge - before) AS amount
          FROM live WHERE before < p_charge
    ),
    planned AS (
        SELECT COALESCE((SELECT SUM(remaining_nanos) FROM live), 0) AS live_credit,
               COALESCE((SELECT SUM(amount) FROM take), 0) AS covered
    ),
    hold_upd AS (
        -- The balance reported is the live credit left: a lot that expired before its
        -- expiry was recorded is still in the working balance but no longer spendable.
        UPDATE metering_hold h
           SET status = 'settled', closed_at = p_now, charged_nanos = p_charge,
               billed_seconds = p_billed_seconds,
               unpaid_nanos = p_charge - planned.covered,
               balance_after_nanos = planned.live_credit - planned.covered,
               available_after_nanos = GREATEST(0, planned.live_credit - planned.covered
                                                   - (acct_now.held_nanos - p_release_held))
          FROM planned, acct_now
         WHERE h.id = p_hold_id AND h.status = p_status_before
        RETURNING h.unpaid_nanos, h.balance_after_nanos, h.available_after_nanos
    ),
    lots AS (
        UPDATE billing_creditlot l SET remaining_nanos = l.remaining_nanos - take.amount
          FROM take, hold_upd
         WHERE l.id = take.id
        RETURNING l.id, take.amount
    ),
    acct AS (
        UPDATE accounts_account a
           SET balance_nanos = a.balance_nanos - planned.covered,
               held_nanos = a.held_nanos - p_release_held,
               slots_in_use = a.slots_in_use - p_release_slots,
               receivable_nanos = a.receivable_nanos + p_charge - planned.covered,
               credit_valid_until = COALESCE(
                   (SELECT MIN(l.expires_at) FROM billing_creditlot l
                      LEFT JOIN take ON take.id = l.id
                     WHERE l.account_id = p_account_id
                       AND l.remaining_nanos - COALESCE(take.amount, 0) > 0),
                   p_far_future)
          FROM planned, hold_upd
         WHERE a.id = p_account_id
        RETURNING a.balance_nanos, a.auto_reload_threshold_nanos
    ),
    txn AS (
        -- A run charged nothing (a BYOK run at a zero fee, zero seconds) moves no value: no
        -- ledger transaction, since every transaction needs a non-zero leg.
        INSERT INTO billing_ledgertransaction (account_id, kind, memo, created_at)
        SELECT p_account_id, 'usage', p_memo, p_now FROM hold_upd WHERE p_charge > 0
        RETURNING id
    ),
    entries AS (
        INSERT INTO billing_ledgerentry (transaction_id, book, account_id, lot_id, amount_nanos)
        SELECT txn.id, 'customer_credit', p_account_id, lots.id, -lots.amount FROM txn, lots
        UNION ALL
        SELECT txn.id, 'customer_receivable', p_account_id, NULL,
               planned.covered - p_charge
          FROM txn, planned WHERE planned.covered < p_charge
        UNION ALL
        SELECT txn.id, revenue.book, p_account_id, NULL, revenue.amount
          FROM txn, (VALUES (p_book_1, p_amount_1::bigint),
                            (p_book_2, p_amount_2::bigint)) AS revenue (book, amount)
         WHERE revenue.amount <> 0
    ),
    usage AS (
        INSERT INTO metering_usagerecord (hold_id, account_id, api_key_id, model_id, kind, byok,
            inference_seconds, load_seconds, billed_seconds, input_tokens, output_tokens,
            provider_cost_nanos, charged_nanos, unpaid_nanos, created_at)
        SELECT p_hold_id, p_account_id, p_key_id, p_model_id, p_kind, p_byok,
               p_inference_seconds, p_load_seconds, p_billed_seconds, p_input_tokens,
               p_output_tokens, p_provider_cost_nanos, p_charge, hold_upd.unpaid_nanos,
               p_now
          FROM hold_upd
    ),
    low_balance AS (
        -- The charge took the balance from at or above the auto-reload threshold to below
        -- it: the crossing is recorded in this same transaction.
        INSERT INTO billing_lowbalanceevent (account_id, threshold_nanos, balance_before_nanos,
            balance_after_nanos, created_at, outcome)
        SELECT p_account_id, acct.auto_reload_threshold_nanos,
               acct.balance_nanos + planned.covered, acct.balance_nanos, p_now, ''
          FROM acct, planned
         WHERE acct.auto_reload_threshold_nanos IS NOT NULL
           AND acct.balance_nanos + planned.covered >= acct.auto_reload_threshold_nanos
           AND acct.auto_reload_threshold_nanos > acct.balance_nanos
        RETURNING id
    )
    SELECT hold_upd.unpaid_nanos, hold_upd.balance_after_nanos, hold_upd.available_after_nanos,
           (SELECT id FROM low_balance)
      FROM hold_upd;
END
$fn$;
"""

DROP = "DROP FUNCTION IF EXISTS metering_settle"


def forward(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(CREATE, params=None)


def backward(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(DROP, params=None)


class Migration(migrations.Migration):
    dependencies = [
        ("metering", "0005_hold_settle_outcome"),
        ("billing", "0007_lot_index_without_remaining"),
        ("accounts", "0004_account_fillfactor"),
    ]
    operations = [migrations.RunPython(forward, backward)]
