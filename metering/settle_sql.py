"""Settle on PostgreSQL, as the database function metering_settle: one statement in one
round trip, and the account's row lock is held only while the server works.

Its Python twin is metering/settle.py's _hold_settle_portable (the ORM path, for SQLite's
first-look mode); tests/metering/test_settle_paths.py runs both on the same scenarios and
compares every figure. The price inside it is metering/pricing_sql.py's. Migrations
create it from this text (metering/0006, replaced by later ones when it changes:
metering/0009 when it took units and key spend limits, metering/0012 when it read the
account's held amount with its lock instead of again).

What one settle of an open-model run paid from one lot writes (bench/README.md, "What a
settle writes"): the hold (a new version: its status is in the sweep index's predicate,
so never a HOT update), the lot and the account (HOT updates: no indexed column changes),
one ledger transaction and two entries, and one usage record. The usage record's and
the hold's references to the account and the usage record's to its hold are not
foreign-key constraints (metering/0012): their ids come from the rows this statement
locks and updates, and each constraint cost a lookup and share lock of the hot account
row (or of the hold) per insert, and a WAL record."""

CREATE = r"""
CREATE OR REPLACE FUNCTION metering_settle(
    p_hold_id uuid,
    p_now timestamptz,
    p_late_window interval,
    p_inference_seconds numeric,
    p_load_seconds numeric,
    p_input_tokens bigint,
    p_output_tokens bigint,
    p_provider_cost_nanos bigint,
    p_far_future timestamptz,
    p_unit text,
    p_units numeric
) RETURNS TABLE (out_outcome text, out_hold_status text, out_charged_nanos bigint,
                 out_billed_seconds bigint, out_unpaid_nanos bigint,
                 out_balance_after_nanos bigint, out_available_after_nanos bigint,
                 out_low_balance_event_id bigint, out_key_id uuid,
                 out_spend_period_start timestamptz, out_key_spent_nanos bigint,
                 out_key_limit_nanos bigint)
LANGUAGE plpgsql AS $fn$
-- out_outcome: 'settled' (now, or earlier: the stored answer is returned), 'not_found',
-- 'closed' (released, or expired past the late-settle window; out_hold_status says
-- which), 'needs_seconds' / 'needs_cost' (the usage does not fit the hold's model),
-- 'no_price_<unit>' (the hold's model has no price for the unit reported: p_unit is
-- 'images', 'seconds' or 'requests', with p_units of it, for closed models).
-- out_key_*: the key's spend in the run's period after the settle, and its limit, when
-- the run counts against a spend limit (ratelimits/key_limits.py; else NULL).
DECLARE
    v_hold metering_hold%ROWTYPE;
    v_account_id uuid;
    v_charge bigint;
    v_billed_seconds bigint;
    v_cost numeric;  -- closed models: provider cost in nanos, times a million
    v_passthrough bigint;
    v_book_1 text;
    v_amount_1 bigint;
    v_book_2 text := 'open_revenue';
    v_amount_2 bigint := 0;
    v_release_held bigint := 0;
    v_release_slots integer := 0;
    v_memo text;
    v_unit_price bigint;
    v_key_limit bigint;
    v_account_held bigint;
BEGIN
    SELECT account_id INTO v_account_id FROM metering_hold WHERE id = p_hold_id;
    IF NOT FOUND THEN
        RETURN QUERY SELECT 'not_found'::text, NULL::text, NULL::bigint, NULL::bigint,
            NULL::bigint, NULL::bigint, NULL::bigint, NULL::bigint, NULL::uuid,
            NULL::timestamptz, NULL::bigint, NULL::bigint;
        RETURN;
    END IF;
    -- Lock the account first: every write to its lots, holds and balance takes this
    -- lock, and every statement below starts after it is granted, so reads are current.
    -- What it holds cannot change while the lock is ours: read it here, once.
    SELECT held_nanos INTO v_account_held FROM accounts_account WHERE id = v_account_id
       FOR UPDATE;
    SELECT * INTO v_hold FROM metering_hold WHERE id = p_hold_id;

    IF v_hold.status = 'settled' THEN
        RETURN QUERY SELECT 'settled'::text, v_hold.status::text, v_hold.charged_nanos,
            v_hold.billed_seconds, v_hold.unpaid_nanos, v_hold.balance_after_nanos,
            v_hold.available_after_nanos, NULL::bigint, NULL::uuid, NULL::timestamptz,
            NULL::bigint, NULL::bigint;
        RETURN;
    END IF;
    IF v_hold.status = 'released'
       OR ((v_hold.status = 'expired' OR v_hold.lease_expires_at <= p_now)
           AND p_now > v_hold.lease_expires_at + p_late_window) THEN
        RETURN QUERY SELECT 'closed'::text,
            (CASE WHEN v_hold.status = 'open' THEN 'expired' ELSE v_hold.status END)::text,
            NULL::bigint, NULL::bigint, NULL::bigint, NULL::bigint, NULL::bigint,
            NULL::bigint, NULL::uuid, NULL::timestamptz, NULL::bigint, NULL::bigint;
        RETURN;
    END IF;

    -- The price: metering/pricing_sql.py's functions, metering/pricing.py's twins.
    IF v_hold.kind = 'open' THEN
        IF p_inference_seconds IS NULL THEN
            RETURN QUERY SELECT 'needs_seconds'::text, v_hold.status::text, NULL::bigint,
                NULL::bigint, NULL::bigint, NULL::bigint, NULL::bigint, NULL::bigint,
                NULL::uuid, NULL::timestamptz, NULL::bigint, NULL::bigint;
            RETURN;
        END IF;
        v_billed_seconds := metering_billed_seconds(p_inference_seconds);
        v_charge := v_billed_seconds * v_hold.nanos_per_second;
        v_book_1 := 'open_revenue';
        v_amount_1 := v_charge;
    ELSIF v_hold.byok THEN
        v_charge := v_hold.byok_fee_nanos;
        v_book_1 := 'byok_fee';
        v_amount_1 := v_charge;
    ELSE
        IF p_provider_cost_nanos IS NOT NULL THEN
            v_cost := p_provider_cost_nanos::numeric * 1000000;
        ELSIF p_input_tokens IS NOT NULL AND p_output_tokens IS NOT NULL THEN
            IF v_hold.input_nanos_per_mtok IS NULL THEN
                RETURN QUERY SELECT 'no_price_tokens'::text, v_hold.status::text,
                    NULL::bigint, NULL::bigint, NULL::bigint, NULL::bigint, NULL::bigint,
                    NULL::bigint, NULL::uuid, NULL::timestamptz, NULL::bigint, NULL::bigint;
                RETURN;
            END IF;
            v_cost := metering_token_cost_micro(p_input_tokens, p_output_tokens,
                                                v_hold.input_nanos_per_mtok,
                                                v_hold.output_nanos_per_mtok);
        ELSIF p_unit IS NOT NULL THEN
            v_unit_price := CASE p_unit WHEN 'images' THEN v_hold.nanos_per_image
                                        WHEN 'seconds' THEN v_hold.nanos_per_second
                                        WHEN 'requests' THEN v_hold.nanos_per_request END;
            IF v_unit_price IS NULL THEN
                RETURN QUERY SELECT ('no_price_' || p_unit)::text, v_hold.status::text,
                    NULL::bigint, NULL::bigint, NULL::bigint, NULL::bigint, NULL::bigint,
                    NULL::bigint, NULL::uuid, NULL::timestamptz, NULL::bigint, NULL::bigint;
                RETURN;
            END IF;
            v_cost := metering_unit_cost_micro(p_units, v_unit_price);
        ELSE
            RETURN QUERY SELECT 'needs_cost'::text, v_hold.status::text, NULL::bigint,
                NULL::bigint, NULL::bigint, NULL::bigint, NULL::bigint, NULL::bigint,
                NULL::uuid, NULL::timestamptz, NULL::bigint, NULL::bigint;
            RETURN;
        END IF;
        SELECT charge.total_nanos, charge.provider_cost_nanos INTO v_charge, v_passthrough
          FROM metering_closed_charge(v_cost, v_hold.platform_fee_ppm) AS charge;
        v_book_1 := 'provider_passthrough';
        v_amount_1 := v_passthrough;
        v_book_2 := 'platform_fee';
        v_amount_2 := v_charge - v_passthrough;
    END IF;
    -- An open hold still holds its money and slots (even when its lease lapsed and no
    -- sweep has run yet); an expired one gave them back already.
    IF v_hold.status = 'open' THEN
        v_release_held := v_hold.reserved_nanos;
        v_release_slots := v_hold.weight;
    END IF;
    v_memo := left(v_hold.model_id || ' run ' || v_hold.request_id, 255);
    IF v_hold.spend_period_start IS NOT NULL THEN
        -- Read under the account lock, which a change of the limit takes too.
        SELECT spend_limit_nanos INTO v_key_limit FROM accounts_apikey
         WHERE id = v_hold.api_key_id;
    END IF;

    RETURN QUERY
    WITH live AS (
        SELECT id, remaining_nanos,
               SUM(remaining_nanos) OVER (ORDER BY expires_at, id) - remaining_nanos AS before
          FROM billing_creditlot
         WHERE account_id = v_account_id AND remaining_nanos > 0 AND expires_at > p_now
    ),
    take AS (
        SELECT id, LEAST(remaining_nanos, v_charge - before) AS amount
          FROM live WHERE before < v_charge
    ),
    planned AS (
        SELECT COALESCE((SELECT SUM(remaining_nanos) FROM live), 0) AS live_credit,
               COALESCE((SELECT SUM(amount) FROM take), 0) AS covered
    ),
    hold_upd AS (
        -- The balance reported is the live credit left: a lot that expired before its
        -- expiry was recorded is still in the working balance but no longer spendable.
        UPDATE metering_hold h
           SET status = 'settled', closed_at = p_now, charged_nanos = v_charge,
               billed_seconds = v_billed_seconds,
               unpaid_nanos = v_charge - planned.covered,
               balance_after_nanos = planned.live_credit - planned.covered,
               available_after_nanos = GREATEST(0, planned.live_credit - planned.covered
                                                   - (v_account_held - v_release_held))
          FROM planned
         WHERE h.id = p_hold_id AND h.status = v_hold.status
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
               held_nanos = a.held_nanos - v_release_held,
               slots_in_use = a.slots_in_use - v_release_slots,
               receivable_nanos = a.receivable_nanos + v_charge - planned.covered,
               credit_valid_until = COALESCE(
                   (SELECT MIN(l.expires_at) FROM billing_creditlot l
                      LEFT JOIN take ON take.id = l.id
                     WHERE l.account_id = v_account_id
                       AND l.remaining_nanos - COALESCE(take.amount, 0) > 0),
                   p_far_future)
          FROM planned, hold_upd
         WHERE a.id = v_account_id
        RETURNING a.balance_nanos, a.auto_reload_threshold_nanos
    ),
    txn AS (
        -- A run charged nothing (a BYOK run at a zero fee, zero seconds) moves no value: no
        -- ledger transaction, since every transaction needs a non-zero leg.
        INSERT INTO billing_ledgertransaction (account_id, kind, memo, created_at)
        SELECT v_account_id, 'usage', v_memo, p_now FROM hold_upd WHERE v_charge > 0
        RETURNING id
    ),
    entries AS (
        INSERT INTO billing_ledgerentry (transaction_id, book, account_id, lot_id, amount_nanos)
        SELECT txn.id, 'customer_credit', v_account_id, lots.id, -lots.amount FROM txn, lots
        UNION ALL
        SELECT txn.id, 'customer_receivable', v_account_id, NULL,
               planned.covered - v_charge
          FROM txn, planned WHERE planned.covered < v_charge
        UNION ALL
        SELECT txn.id, revenue.book, v_account_id, NULL, revenue.amount
          FROM txn, (VALUES (v_book_1, v_amount_1::bigint),
                            (v_book_2, v_amount_2::bigint)) AS revenue (book, amount)
         WHERE revenue.amount <> 0
    ),
    usage AS (
        INSERT INTO metering_usagerecord (hold_id, account_id, api_key_id, model_id, kind, byok,
            inference_seconds, load_seconds, billed_seconds, input_tokens, output_tokens,
            provider_cost_nanos, unit, units, charged_nanos, unpaid_nanos, created_at)
        SELECT p_hold_id, v_account_id, v_hold.api_key_id, v_hold.model_id, v_hold.kind,
               v_hold.byok,
               p_inference_seconds, p_load_seconds, v_billed_seconds, p_input_tokens,
               p_output_tokens, v_passthrough,
               CASE WHEN v_unit_price IS NULL THEN '' ELSE p_unit END,
               CASE WHEN v_unit_price IS NULL THEN NULL ELSE p_units END,
               v_charge, hold_upd.unpaid_nanos, p_now
          FROM hold_upd
    ),
    key_spend AS (
        -- The key's spend (ratelimits/key_limits.py, whose key_spend_move is the
        -- portable twin): the charge replaces the reservation, in the authorize's period.
        UPDATE ratelimits_keyspend s
           SET spent_nanos = s.spent_nanos + v_charge - v_release_held
          FROM hold_upd
         WHERE v_hold.spend_period_start IS NOT NULL
           AND s.api_key_id = v_hold.api_key_id
           AND s.period_start = v_hold.spend_period_start
        RETURNING s.spent_nanos
    ),
    low_balance AS (
        -- The charge took the balance from at or above the auto-reload threshold to below
        -- it: the crossing is recorded in this same transaction.
        INSERT INTO billing_lowbalanceevent (account_id, threshold_nanos, balance_before_nanos,
            balance_after_nanos, created_at, outcome)
        SELECT v_account_id, acct.auto_reload_threshold_nanos,
               acct.balance_nanos + planned.covered, acct.balance_nanos, p_now, ''
          FROM acct, planned
         WHERE acct.auto_reload_threshold_nanos IS NOT NULL
           AND acct.balance_nanos + planned.covered >= acct.auto_reload_threshold_nanos
           AND acct.auto_reload_threshold_nanos > acct.balance_nanos
        RETURNING id
    )
    SELECT 'settled'::text, 'settled'::text, v_charge, v_billed_seconds,
           hold_upd.unpaid_nanos, hold_upd.balance_after_nanos,
           hold_upd.available_after_nanos, (SELECT id FROM low_balance),
           v_hold.api_key_id, v_hold.spend_period_start,
           (SELECT spent_nanos FROM key_spend), v_key_limit
      FROM hold_upd;
END
$fn$;
"""

DROP = "DROP FUNCTION IF EXISTS metering_settle"

# The function before it took p_unit and p_units (metering/0006 to 0008).
DROP_BEFORE_UNITS = ("DROP FUNCTION IF EXISTS metering_settle(uuid, timestamptz, interval, "
                     "numeric, numeric, bigint, bigint, bigint, timestamptz)")
