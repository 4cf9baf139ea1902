"""Money: integer nano-dollars inside (1 USD = 10**9 nanos), decimal strings at the API,
cents only at the Stripe boundary. One charge is computed exactly and rounded once,
half up, to the nano-dollar."""

import re
from fractions import Fraction
from typing import Annotated

from drf_spectacular.utils import extend_schema_field
from pydantic import AfterValidator, Field, Strict
from pydantic_core import PydanticCustomError
from rest_framework import serializers

NANOS_PER_USD = 10**9
NANOS_PER_CENT = 10**7
MAX_AMOUNT_NANOS = 10**6 * NANOS_PER_USD  # $1,000,000: far beyond any single movement

# The one pattern of a money string, everywhere (the contract writes it as
# ^\d+(\.\d{1,9})?$): digits, then at most 9 decimals; no sign, no surrounding space, no
# exponent. ASCII digits only: Python's \d would also match Arabic-Indic or fullwidth
# digits, which int() reads, so "\u0661\u0660" would be $10.
MONEY_PATTERN = r"^\d+(\.\d{1,9})?$"
_MONEY_RE = re.compile(r"([0-9]+)(?:\.([0-9]{1,9}))?")
# Far more digits than any amount the service takes (whose own maximum says so), and few
# enough that a hostile string is refused before any arithmetic on it.
MONEY_MAX_CHARACTERS = 40


class MoneyFormatError(ValueError):
    pass


def usd_to_nanos(text: str) -> int:
    """Parse an exact decimal string ("10", "5.00", "0.000072") into nano-dollars: the one
    parser of every money field."""
    if not isinstance(text, str) or len(text) > MONEY_MAX_CHARACTERS:
        raise MoneyFormatError('Must be a decimal string in US dollars, e.g. "10.00".')
    match = _MONEY_RE.fullmatch(text)
    if match is None:
        if re.fullmatch(r"[0-9]+\.[0-9]{10,}", text):
            raise MoneyFormatError("At most 9 decimal places.")
        raise MoneyFormatError('Must be a decimal string in US dollars, e.g. "10.00".')
    whole, frac = match.groups()
    return int(whole) * NANOS_PER_USD + int((frac or "").ljust(9, "0"))


def nanos_to_usd(nanos: int) -> str:
    """Render nano-dollars as an exact decimal string with 9 places."""
    sign = "-" if nanos < 0 else ""
    whole, frac = divmod(abs(nanos), NANOS_PER_USD)
    return f"{sign}{whole}.{frac:09d}"


def round_half_up(value: Fraction) -> int:
    """Round an exact non-negative amount (in nanos) once, half up."""
    if value < 0:
        raise ValueError("charges are never negative")
    return int(value + Fraction(1, 2))


def nanos_to_cents(nanos: int) -> int:
    """Stripe boundary: amounts we charge are whole cents by construction."""
    cents, rest = divmod(nanos, NANOS_PER_CENT)
    if rest:
        raise ValueError(f"{nanos} nanos is not a whole number of cents")
    return cents


def cents_to_nanos(cents: int) -> int:
    return cents * NANOS_PER_CENT


@extend_schema_field({"type": "string", "pattern": MONEY_PATTERN, "example": "10.00"})
class MoneyField(serializers.Field):
    """A decimal-string USD amount, exact to 9 places, parsed to integer nanos."""

    default_error_messages = {
        "invalid": 'Must be a decimal string in US dollars, e.g. "10.00".',
        "not_positive": "Must be greater than zero.",
        "too_large": "Must be at most {max_usd}.",
    }

    def __init__(self, *, positive: bool = True, max_nanos: int = MAX_AMOUNT_NANOS, **kwargs):
        self.positive = positive
        self.max_nanos = max_nanos
        super().__init__(**kwargs)

    def to_internal_value(self, data) -> int:
        if not isinstance(data, str):
            self.fail("invalid")
        try:
            nanos = usd_to_nanos(data)
        except MoneyFormatError as exc:
            raise serializers.ValidationError(str(exc)) from exc
        if self.positive and nanos == 0:
            self.fail("not_positive")
        if nanos > self.max_nanos:
            self.fail("too_large", max_usd=nanos_to_usd(self.max_nanos))
        return nanos

    def to_representation(self, value: int) -> str:
        return nanos_to_usd(value)


def _pydantic_usd_nanos(text: str) -> int:
    try:
        nanos = usd_to_nanos(text)
    except MoneyFormatError as exc:
        raise PydanticCustomError("money", str(exc)) from None
    if nanos > MAX_AMOUNT_NANOS:
        raise PydanticCustomError("money", "Must be at most {max_usd}.",
                                  {"max_usd": nanos_to_usd(MAX_AMOUNT_NANOS)})
    return nanos


# For pydantic models: a decimal-string USD amount (zero allowed), parsed to nanos.
UsdNanos = Annotated[str, Strict(), AfterValidator(_pydantic_usd_nanos),
                     Field(json_schema_extra={"pattern": MONEY_PATTERN,
                                              "examples": ["10.00"]})]
