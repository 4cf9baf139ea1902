"""What a closed-model run is measured in: tokens, or one unit (images, seconds of video,
audio or compute, requests), or the provider's own cost; and the rule that a report
names exactly one kind of usage. The price of each unit is metering/pricing.py's
(its SQL twin: metering/pricing_sql.py, used by the settle on PostgreSQL)."""

from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction

from config.api import ApplicationError
from metering.pricing import token_cost, unit_cost

# Each kind of usage a settle body may report, by its fields.
USAGE_KINDS = {
    "inference_seconds": ("inference_seconds", "load_seconds"),
    "tokens": ("input_tokens", "output_tokens"),
    "provider_cost_usd": ("provider_cost_usd",),
    "images": ("images",),
    "seconds": ("seconds",),
    "requests": ("requests",),
}
# The units a closed model may be priced per, and the words for them.
UNIT_NAMES = {"images": "image", "seconds": "second", "requests": "request"}


class UsageKindsMixed(ApplicationError):
    code = "invalid_request"
    message = "Report one kind of usage."


class UnitNotPriced(ApplicationError):
    code = "invalid_request"
    message = "The model has no price for this unit."


def usage_kinds_refusal(*, present: set[str], where: str = "") -> UsageKindsMixed | None:
    """A report (settle body or estimate) that names more than one kind of usage."""
    kinds = [kind for kind, fields in USAGE_KINDS.items() if present & set(fields)]
    if len(kinds) <= 1:
        return None
    named = ", ".join(kinds)
    return UsageKindsMixed(extra={"fields": {
        f"{where}{fields[0]}": [f"Report one kind of usage, not several ({named})."]
        for kind, fields in USAGE_KINDS.items() if kind in kinds}})


def unit_not_priced(*, unit: str, field: str) -> UnitNotPriced:
    name = "token" if unit == "tokens" else UNIT_NAMES[unit]
    return UnitNotPriced(f"The model has no price per {name}.",
                         extra={"fields": {field: [f"The model has no price per {name}."]}})


@dataclass(frozen=True, slots=True)
class UnitEstimate:
    seconds: Decimal | None = None
    input_tokens: int | None = None
    max_output_tokens: int | None = None
    images: int | None = None
    requests: int | None = None


def closed_usage_cost(*, model, policy, estimate: UnitEstimate) -> Fraction:
    """The provider's cost an authorize reserves for a closed model (before the fee):
    the unit of the estimate, or, with none, the model's first priced unit (tokens,
    images, seconds, requests) at the configured default amount."""
    present = {name for name in ("seconds", "images", "requests")
               if getattr(estimate, name) is not None}
    if estimate.input_tokens is not None or estimate.max_output_tokens is not None:
        present.add("input_tokens")
    refusal = usage_kinds_refusal(present=present, where="estimate.")
    if refusal is not None:
        raise refusal
    prices = {"images": model.nanos_per_image, "seconds": model.nanos_per_unit_second,
              "requests": model.nanos_per_request}
    if present == {"input_tokens"} or (not present and model.input_priced):
        if not model.input_priced:
            raise unit_not_priced(unit="tokens", field="estimate.input_tokens")
        return token_cost(
            input_tokens=policy.default_estimate_input_tokens
            if estimate.input_tokens is None else estimate.input_tokens,
            output_tokens=policy.default_estimate_output_tokens
            if estimate.max_output_tokens is None else estimate.max_output_tokens,
            input_nanos_per_mtok=model.input_nanos_per_mtok,
            output_nanos_per_mtok=model.output_nanos_per_mtok)
    if present:
        (unit,) = present
        if prices[unit] is None:
            raise unit_not_priced(unit=unit, field=f"estimate.{unit}")
        units = getattr(estimate, unit)
    else:
        unit = next(name for name in ("images", "seconds", "requests")
                    if prices[name] is not None)
        units = {"images": policy.default_estimate_images,
                 "seconds": policy.default_estimate_seconds,
                 "requests": policy.default_estimate_requests}[unit]
    return unit_cost(units=units, nanos_per_unit=prices[unit])
