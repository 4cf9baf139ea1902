"""The price of a run in SQL, for the settle on PostgreSQL (metering/settle_sql.py): the
twin of metering/pricing.py, function by function. tests/metering/test_pricing_paths.py
runs both on the same cases, amounts that need rounding among them.

Amounts are exact until the one rounding: a closed model's provider cost is carried in
millionths of a nano-dollar (integer), then priced with the fee and rounded half up."""

CREATE = r"""
CREATE OR REPLACE FUNCTION metering_billed_seconds(p_inference_seconds numeric)
RETURNS bigint LANGUAGE sql IMMUTABLE STRICT AS $fn$
    -- pricing.billed_seconds_for: every started second of inference is billed.
    SELECT ceil(p_inference_seconds)::bigint
$fn$;

CREATE OR REPLACE FUNCTION metering_token_cost_micro(p_input_tokens bigint,
    p_output_tokens bigint, p_input_nanos_per_mtok bigint, p_output_nanos_per_mtok bigint)
RETURNS numeric LANGUAGE sql IMMUTABLE STRICT AS $fn$
    -- pricing.token_cost, times a million: the provider's cost in millionths of a nano.
    SELECT p_input_tokens::numeric * p_input_nanos_per_mtok
           + p_output_tokens::numeric * p_output_nanos_per_mtok
$fn$;

CREATE OR REPLACE FUNCTION metering_closed_charge(p_cost_micro numeric, p_fee_ppm bigint,
    OUT total_nanos bigint, OUT provider_cost_nanos bigint)
LANGUAGE sql IMMUTABLE STRICT AS $fn$
    -- pricing.closed_charge_from_cost: cost plus the fee, rounded once, half up; the
    -- provider's part rounded half up too, never above the total.
    SELECT total.nanos, LEAST(div(2 * p_cost_micro + 1000000, 2000000), total.nanos)::bigint
      FROM (SELECT div(2 * p_cost_micro * (1000000 + p_fee_ppm) + 1000000000000,
                       2000000000000)::bigint AS nanos) AS total
$fn$;
"""

DROP = """
DROP FUNCTION IF EXISTS metering_closed_charge;
DROP FUNCTION IF EXISTS metering_token_cost_micro;
DROP FUNCTION IF EXISTS metering_billed_seconds;
"""
