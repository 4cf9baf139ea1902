"""Prices of runs, computed exactly and rounded once, half up, to the nano-dollar."""

import math
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction

from config.money import round_half_up

MILLION = 1_000_000


def billed_seconds_for(inference_seconds: Decimal) -> int:
    """Inference time is billed per started second; load time never is."""
    return math.ceil(inference_seconds)


def open_charge(*, billed_seconds: int, nanos_per_second: int) -> int:
    return billed_seconds * nanos_per_second


@dataclass(frozen=True, slots=True)
class ClosedCharge:
    provider_cost_nanos: int  # what the provider is passed through (rounded)
    fee_nanos: int  # the platform fee (the rest of the rounded total)

    @property
    def total_nanos(self) -> int:
        return self.provider_cost_nanos + self.fee_nanos


def closed_charge_from_cost(*, provider_cost: Fraction, fee_ppm: int) -> ClosedCharge:
    total = round_half_up(provider_cost * (MILLION + fee_ppm) / MILLION)
    passthrough = min(round_half_up(provider_cost), total)
    return ClosedCharge(provider_cost_nanos=passthrough, fee_nanos=total - passthrough)


def token_cost(*, input_tokens: int, output_tokens: int, input_nanos_per_mtok: int,
               output_nanos_per_mtok: int) -> Fraction:
    return Fraction(input_tokens * input_nanos_per_mtok + output_tokens * output_nanos_per_mtok,
                    MILLION)
