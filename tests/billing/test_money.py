"""Money at the API: exact decimal strings of US dollars, at most 9 places, as integer
nano-dollars inside."""

from fractions import Fraction

import pytest

from config.money import (
    MoneyFormatError,
    cents_to_nanos,
    nanos_to_cents,
    nanos_to_usd,
    round_half_up,
    usd_to_nanos,
)


@pytest.mark.parametrize(("text", "nanos"), [
    ("10", 10 * 10**9), ("5.00", 5 * 10**9), ("0.000072000", 72_000), ("0.000000001", 1),
    ("25.5", 25_500_000_000), ("0", 0),
    ("007.10", 7_100_000_000), ("999999999.999999999", 999_999_999_999_999_999),
])
def test_decimal_strings_parse_exactly(text, nanos):
    assert usd_to_nanos(text) == nanos


@pytest.mark.parametrize("text", [
    "", "abc", "1e3", "1.", ".5", "1.2.3", "+1", "$1", "1,00", "0.0000000001", "1_000",
    # The contract's pattern exactly: no sign (not even on zero), no surrounding space.
    "-1.25", "-0", "-0.0", " 7 ", " 5", "5 ", "\t5", "5\n", "1E3", "0x10",
    # A run of digits long enough to break int() is refused before any arithmetic.
    "9" * 5000, "1." + "0" * 5000, "1" * 41,
    # Other scripts' digits, which int() would read: Arabic-Indic 10, fullwidth 25.
    "\u0661\u0660", "\uff12\uff15", "2\u2075",
])
def test_anything_else_is_refused(text):
    with pytest.raises(MoneyFormatError):
        usd_to_nanos(text)


@pytest.mark.parametrize("value", [25, 2.5, None, b"25"])
def test_only_strings_are_money(value):
    with pytest.raises(MoneyFormatError):
        usd_to_nanos(value)


@pytest.mark.parametrize(("nanos", "text"), [
    (0, "0.000000000"), (1, "0.000000001"), (72_000, "0.000072000"),
    (25 * 10**9, "25.000000000"),
])
def test_nanos_render_with_nine_places_and_round_trip(nanos, text):
    assert nanos_to_usd(nanos) == text
    assert usd_to_nanos(text) == nanos


def test_negative_amounts_render_but_never_parse():
    # Staff see a clawback as a negative amount; nobody can send one.
    assert nanos_to_usd(-1_250_000_000) == "-1.250000000"
    with pytest.raises(MoneyFormatError):
        usd_to_nanos("-1.250000000")


def test_ten_decimal_places_say_why():
    with pytest.raises(MoneyFormatError, match="At most 9 decimal places"):
        usd_to_nanos("0.0000000001")


def test_one_charge_rounds_once_half_up():
    assert round_half_up(Fraction(5, 2)) == 3
    assert round_half_up(Fraction(49, 20)) == 2
    assert round_half_up(Fraction(0)) == 0
    with pytest.raises(ValueError, match="never negative"):
        round_half_up(Fraction(-1, 2))


def test_cents_only_at_the_stripe_boundary():
    assert nanos_to_cents(10 * 10**9) == 1000
    assert cents_to_nanos(1000) == 10 * 10**9
    with pytest.raises(ValueError, match="not a whole number of cents"):
        nanos_to_cents(10**7 + 1)
