"""The run path's batch statements on PostgreSQL (metering/group_commit.py sends them):
several authorizes, or several settles, in one statement, one transaction, one commit.

metering_authorize_batch applies, item by item, exactly the single authorize statement
(metering/sql.py's AUTHORIZE_PG, or AUTHORIZE_LIMITED_PG for a key with a spend limit):
its text is generated here from theirs, each %(name)s placeholder becoming the item's
variable v_name, so the rules live in one place. metering_settle_batch calls
metering_settle (metering/settle_sql.py) for each item. Both take the account row locks in
primary-key order (authorize: items taken in account order; settle: all the batch's
accounts locked first), so two batches never wait on each other in a cycle.

Migrations create both from this text (metering/0010; metering/0013 when the settle
batch took its locks by primary key); a change to the single statements
they are built from needs a migration that runs CREATE again."""

import re

from metering import sql

AUTHORIZE_ITEM_FIELDS = sql.AUTHORIZE_ITEM_FIELDS
_PLACEHOLDER = re.compile(r"%\((\w+)\)s")
_FINAL_FROM = " FROM acct CROSS JOIN hold "
_INTO = (" INTO v_balance_nanos, v_held_nanos, v_slots_in_use, v_tier_max_params_b,"
         " v_tier_concurrency, v_tier_name")


def _item_statement(statement: str) -> str:
    """A single authorize statement as a step of the batch: the item's variables for its
    placeholders, its answer INTO the function's variables."""
    if statement.count(_FINAL_FROM) != 1:
        raise ValueError("the statement's answer must come FROM acct CROSS JOIN hold, once")
    statement = statement.replace(_FINAL_FROM, _INTO + _FINAL_FROM)
    return _PLACEHOLDER.sub(lambda match: f"v_{match.group(1)}", statement)


_ARGS_SEP, _DECLARE_SEP, _ASSIGN_SEP = ",\n    ", "\n    ", "\n        "

AUTHORIZE_CREATE = f"""
CREATE OR REPLACE FUNCTION metering_authorize_batch(
    {_ARGS_SEP.join(f"p_{name} {kind}[]" for name, kind in AUTHORIZE_ITEM_FIELDS)}
) RETURNS TABLE (out_ord integer, out_outcome text, out_balance_nanos bigint,
                 out_held_nanos bigint, out_slots_in_use integer,
                 out_tier_max_params_b numeric, out_tier_concurrency integer,
                 out_tier_name text)
LANGUAGE plpgsql AS $fn$
-- One row per item (out_ord: its place in the arrays, from 1). out_outcome: 'reserved'
-- (the hold is in, the account's figures after it), 'refused' (a rule failed: nothing
-- written for it) or 'duplicate' (the account has a hold for this request_id already:
-- nothing written). The caller takes its slow path for the last two, as after the
-- single statement's refusal or unique violation.
DECLARE
    {_DECLARE_SEP.join(f"v_{name} {kind};" for name, kind in AUTHORIZE_ITEM_FIELDS)}
    v_i integer;
    v_locked uuid;
    v_balance_nanos bigint;
    v_held_nanos bigint;
    v_slots_in_use integer;
    v_tier_max_params_b numeric;
    v_tier_concurrency integer;
    v_tier_name text;
BEGIN
    FOR v_i IN SELECT u.ord FROM unnest(p_account_id) WITH ORDINALITY AS u (account_id, ord)
                ORDER BY u.account_id, u.ord LOOP
        {_ASSIGN_SEP.join(f"v_{name} := p_{name}[v_i];" for name, _ in AUTHORIZE_ITEM_FIELDS)}
        IF v_locked IS DISTINCT FROM v_account_id THEN
            -- The account's row lock first, as the single statement's UPDATE takes it:
            -- every hold of this account is inserted under it, so what the check below
            -- reads stays true until this transaction ends.
            PERFORM 1 FROM accounts_account WHERE id = v_account_id FOR NO KEY UPDATE;
            v_locked := v_account_id;
        END IF;
        IF EXISTS (SELECT 1 FROM metering_hold
                    WHERE account_id = v_account_id AND request_id = v_request_id) THEN
            out_ord := v_i; out_outcome := 'duplicate';
            out_balance_nanos := NULL; out_held_nanos := NULL; out_slots_in_use := NULL;
            out_tier_max_params_b := NULL; out_tier_concurrency := NULL;
            out_tier_name := NULL;
            RETURN NEXT;
            CONTINUE;
        END IF;
        IF v_spend_limit IS NULL THEN
            {_item_statement(sql.AUTHORIZE_PG)};
        ELSE
            {_item_statement(sql.AUTHORIZE_LIMITED_PG)};
        END IF;
        out_ord := v_i;
        out_outcome := CASE WHEN FOUND THEN 'reserved' ELSE 'refused' END;
        out_balance_nanos := v_balance_nanos; out_held_nanos := v_held_nanos;
        out_slots_in_use := v_slots_in_use; out_tier_max_params_b := v_tier_max_params_b;
        out_tier_concurrency := v_tier_concurrency; out_tier_name := v_tier_name;
        RETURN NEXT;
    END LOOP;
END
$fn$;
"""

AUTHORIZE_DROP = "DROP FUNCTION IF EXISTS metering_authorize_batch"

SETTLE_CREATE = r"""
CREATE OR REPLACE FUNCTION metering_settle_batch(
    p_hold_id uuid[],
    p_now timestamptz[],
    p_late_window interval,
    p_inference_seconds numeric[],
    p_load_seconds numeric[],
    p_input_tokens bigint[],
    p_output_tokens bigint[],
    p_provider_cost_nanos bigint[],
    p_far_future timestamptz,
    p_unit text[],
    p_units numeric[]
) RETURNS TABLE (out_ord integer, out_outcome text, out_hold_status text,
                 out_charged_nanos bigint, out_billed_seconds bigint, out_unpaid_nanos bigint,
                 out_balance_after_nanos bigint, out_available_after_nanos bigint,
                 out_low_balance_event_id bigint, out_key_id uuid,
                 out_spend_period_start timestamptz, out_key_spent_nanos bigint,
                 out_key_limit_nanos bigint)
LANGUAGE plpgsql AS $fn$
-- One row per item (out_ord: its place in the arrays, from 1): metering_settle's row.
DECLARE
    v_i integer;
    v_account_id uuid;
    v_account_ids uuid[] := '{}';
BEGIN
    -- Every account of the batch locked first, in primary-key order; metering_settle
    -- then takes each lock again (already held) and does exactly what it does alone.
    -- One primary-key lookup per hold and per account: a set-based statement here would
    -- keep, for the connection's life, the plan made while the hold table was small (a
    -- sequential scan of every hold, on every batch, as the table grows).
    FOR v_i IN 1 .. cardinality(p_hold_id) LOOP
        SELECT account_id INTO v_account_id FROM metering_hold WHERE id = p_hold_id[v_i];
        IF FOUND THEN
            v_account_ids := v_account_ids || v_account_id;
        END IF;
    END LOOP;
    FOR v_account_id IN SELECT DISTINCT a FROM unnest(v_account_ids) AS a ORDER BY a LOOP
        PERFORM 1 FROM accounts_account WHERE id = v_account_id FOR UPDATE;
    END LOOP;
    FOR v_i IN 1 .. cardinality(p_hold_id) LOOP
        RETURN QUERY SELECT v_i, s.* FROM metering_settle(
            p_hold_id[v_i], p_now[v_i], p_late_window, p_inference_seconds[v_i],
            p_load_seconds[v_i], p_input_tokens[v_i], p_output_tokens[v_i],
            p_provider_cost_nanos[v_i], p_far_future, p_unit[v_i], p_units[v_i]) AS s;
    END LOOP;
END
$fn$;
"""

SETTLE_DROP = "DROP FUNCTION IF EXISTS metering_settle_batch"
