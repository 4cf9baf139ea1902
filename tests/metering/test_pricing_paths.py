"""The price in Python (metering/pricing.py) and in SQL (metering/pricing_sql.py, which the
settle on PostgreSQL uses) agree on every case, amounts that need rounding above all: a
half-nano rounds up, less than half rounds down, once, after the fee."""

import random
from decimal import Decimal
from fractions import Fraction

import pytest
from django.db import connection

from metering.pricing import (
    MILLION,
    billed_seconds_for,
    closed_charge_from_cost,
    token_cost,
)

pytestmark = pytest.mark.django_db


def sql_closed_charge(cost_micro: int, fee_ppm: int) -> tuple[int, int]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT total_nanos, provider_cost_nanos FROM "
                       "metering_closed_charge(%s::numeric, %s::bigint)", [cost_micro, fee_ppm])
        return cursor.fetchone()


def python_closed_charge(cost_micro: int, fee_ppm: int) -> tuple[int, int]:
    charge = closed_charge_from_cost(provider_cost=Fraction(cost_micro, MILLION),
                                     fee_ppm=fee_ppm)
    return charge.total_nanos, charge.provider_cost_nanos


@pytest.mark.parametrize(("cost_micro", "fee_ppm", "expected"), [
    # $0.000000025 at 2%: 25.5 nanos rounds half up to 26; the provider's part is 25.
    (25 * MILLION, 20_000, (26, 25)),
    # 24.48 nanos rounds down to 24; the provider's 24.
    (24 * MILLION, 20_000, (24, 24)),
    # Half a nano of cost: the provider's part rounds up to 1, the total (0.51) to 1.
    (MILLION // 2, 20_000, (1, 1)),
    # Just under half a nano in all: nothing.
    (490_196, 20_000, (0, 0)),
    # Exactly half a nano in all (0.5 = 490,196.07... micro at 2%): not representable;
    # the closest above rounds up.
    (490_197, 20_000, (1, 0)),
    # No fee; a zero cost is a zero charge.
    (7 * MILLION + 500_000, 0, (8, 8)),
    (0, 20_000, (0, 0)),
    # The contract's examples: $0.20 at 2% is $0.204.
    (200_000_000 * MILLION, 20_000, (204_000_000, 200_000_000)),
])
def test_closed_model_charges_round_once_half_up_in_both(cost_micro, fee_ppm, expected):
    assert python_closed_charge(cost_micro, fee_ppm) == expected
    assert sql_closed_charge(cost_micro, fee_ppm) == expected


def test_python_and_sql_agree_on_thousands_of_random_costs_and_fees():
    rng = random.Random(20261130)
    cases = [(rng.randrange(0, 10**rng.randrange(1, 16)), rng.choice([0, 1, 20_000, 33_333,
                                                                      125_000, 999_999]))
             for _ in range(2_000)]
    for cost_micro, fee_ppm in cases:
        assert sql_closed_charge(cost_micro, fee_ppm) == \
            python_closed_charge(cost_micro, fee_ppm), (cost_micro, fee_ppm)


@pytest.mark.parametrize(("input_tokens", "output_tokens", "input_per_mtok",
                          "output_per_mtok"), [
    (1, 1, 1, 1),  # two millionths of a nano
    (1_234, 567, 3_000_000_000, 15_000_000_000),
    (10**9, 10**9, 10**14, 10**14),  # the largest the API takes
    (0, 0, 5, 5),
])
def test_token_costs_are_exact_in_both(input_tokens, output_tokens, input_per_mtok,
                                       output_per_mtok):
    python = token_cost(input_tokens=input_tokens, output_tokens=output_tokens,
                        input_nanos_per_mtok=input_per_mtok,
                        output_nanos_per_mtok=output_per_mtok)
    with connection.cursor() as cursor:
        cursor.execute("SELECT metering_token_cost_micro(%s, %s, %s, %s)",
                       [input_tokens, output_tokens, input_per_mtok, output_per_mtok])
        (sql_micro,) = cursor.fetchone()
    assert Fraction(sql_micro) == python * MILLION


@pytest.mark.parametrize(("seconds", "billed"), [
    ("0", 0), ("0.000001", 1), ("1", 1), ("1.000001", 2), ("12.01", 13),
    ("2591999.5", 2592000),
])
def test_every_started_second_is_billed_in_both(seconds, billed):
    assert billed_seconds_for(Decimal(seconds)) == billed
    with connection.cursor() as cursor:
        cursor.execute("SELECT metering_billed_seconds(%s::numeric)", [seconds])
        assert cursor.fetchone()[0] == billed
