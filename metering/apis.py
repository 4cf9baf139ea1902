import re
from decimal import Decimal
from typing import Annotated

from django.http import JsonResponse
from drf_spectacular.utils import extend_schema
from pydantic import BaseModel, ConfigDict, Field, StringConstraints
from rest_framework import serializers
from rest_framework.response import Response

from accounts.selectors import params_b_number
from config import metrics
from config.api import (
    ApplicationError,
    InternalApi,
    JsonNumberField,
    JsonStringField,
    LeanInternalApi,
)
from config.money import MoneyField, UsdNanos, nanos_to_usd
from metering.authorize import hold_authorize
from metering.catalog import ModelNotFound, model_upsert
from metering.holds import hold_heartbeat, hold_release
from metering.models import Hold, InferenceModel
from metering.selectors import model_get, size_class_for
from metering.settle import Settlement, Usage, hold_settle

MODEL_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@+/-]{0,199}$")
# A model id is a path of segments (meta-llama/Llama-3-70b): none empty, "." or "..", which
# a URL would collapse (the model could never be addressed again).
MODEL_ID_BAD_SEGMENTS = {"", ".", ".."}


def model_id_problem(model_id: str) -> str | None:
    if not MODEL_ID_RE.fullmatch(model_id):
        return "Letters, digits and . _ : @ + / -, at most 200 characters."
    if MODEL_ID_BAD_SEGMENTS & set(model_id.split("/")):
        return "No empty, \".\" or \"..\" segment between slashes."
    return None
MAX_PER_MTOK_NANOS = 10**5 * 10**9  # $100,000 per million tokens


def model_output(model: InferenceModel) -> dict:
    body = {"id": model.id, "kind": model.kind}
    if model.kind == InferenceModel.Kind.OPEN:
        size_class = size_class_for(params_b=model.params_b)
        body["params_b"] = params_b_number(model.params_b)
        body["size_class"] = size_class and {
            "name": size_class.name,
            "usd_per_second": nanos_to_usd(size_class.nanos_per_second),
            "concurrency_weight": size_class.concurrency_weight,
        }
    else:
        body["provider"] = model.provider
        body["input_usd_per_mtok"] = nanos_to_usd(model.input_nanos_per_mtok)
        body["output_usd_per_mtok"] = nanos_to_usd(model.output_nanos_per_mtok)
    body["updated_at"] = serializers.DateTimeField().to_representation(model.updated_at)
    return body


class ModelDetailApi(InternalApi):
    class InputSerializer(serializers.Serializer):
        kind = serializers.ChoiceField(choices=InferenceModel.Kind.choices)
        params_b = JsonNumberField(max_digits=10, decimal_places=3, required=False,
                                   min_value=Decimal("0.001"))
        provider = JsonStringField(max_length=50, required=False)
        input_usd_per_mtok = MoneyField(positive=False, max_nanos=MAX_PER_MTOK_NANOS,
                                        required=False)
        output_usd_per_mtok = MoneyField(positive=False, max_nanos=MAX_PER_MTOK_NANOS,
                                         required=False)

        def validate(self, attrs):
            required = (("params_b",) if attrs["kind"] == InferenceModel.Kind.OPEN
                        else ("provider", "input_usd_per_mtok", "output_usd_per_mtok"))
            missing = {name: [f"Required for {attrs['kind']} models."]
                       for name in required if name not in attrs}
            if missing:
                raise serializers.ValidationError(missing)
            return attrs

    @extend_schema(request=InputSerializer, responses={200: dict},
                   summary="Create or replace a model")
    def put(self, request, model_id):
        problem = model_id_problem(model_id)
        if problem:
            raise serializers.ValidationError({"model_id": [problem]})
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        values = data.validated_data
        model, _ = model_upsert(
            model_id=model_id, kind=values["kind"], params_b=values.get("params_b"),
            provider=values.get("provider", ""),
            input_nanos_per_mtok=values.get("input_usd_per_mtok"),
            output_nanos_per_mtok=values.get("output_usd_per_mtok"),
        )
        return Response(model_output(model))

    @extend_schema(responses={200: dict}, summary="Read a model")
    def get(self, request, model_id):
        model = model_get(model_id=model_id)
        if model is None:
            raise ModelNotFound()
        return Response(model_output(model))


# --- The run path ---------------------------------------------------------------------------
# The gateway's calls, on the lean base: pydantic models validate the JSON bodies.

MAX_SECONDS = 30 * 24 * 3600
MAX_TOKENS = 10**9

Seconds = Annotated[float, Field(ge=0, le=MAX_SECONDS)]
Tokens = Annotated[int, Field(ge=0, le=MAX_TOKENS)]
# Identifiers never contain NUL or other control characters (PostgreSQL refuses NUL in
# text; the others are never meant).
Text = Annotated[str, StringConstraints(min_length=1, max_length=200,
                                        pattern=r"^[^\x00-\x1f\x7f]+$")]


def as_decimal(seconds: float | None) -> Decimal | None:
    """A JSON number as the exact decimal it was written as (12.01, not 12.0099999...)."""
    return None if seconds is None else Decimal(repr(seconds))


class Estimate(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")

    seconds: Seconds | None = None
    input_tokens: Tokens | None = None
    max_output_tokens: Tokens | None = None


def authorization_output(authorization) -> dict:
    return {
        "hold_id": str(authorization.hold_id),
        "account_id": str(authorization.account_id),
        "reserved_usd": nanos_to_usd(authorization.reserved_nanos),
        "lease_expires_at": iso_datetime(authorization.lease_expires_at),
        "balance_usd": nanos_to_usd(authorization.balance_nanos),
        "available_usd": nanos_to_usd(max(0, authorization.balance_nanos
                                          - authorization.held_nanos)),
        "tier": {"name": authorization.tier_name,
                 "max_params_b": params_b_number(authorization.tier_max_params_b),
                 "concurrency": authorization.tier_concurrency},
        "concurrency": {"in_use": authorization.slots_in_use,
                        "limit": authorization.tier_concurrency},
    }


def settlement_output(settlement: Settlement) -> dict:
    return {
        "hold_id": str(settlement.hold_id), "status": Hold.Status.SETTLED,
        "charged_usd": nanos_to_usd(settlement.charged_nanos),
        "billed_seconds": settlement.billed_seconds,
        "balance_usd": nanos_to_usd(settlement.balance_after_nanos),
        "available_usd": nanos_to_usd(settlement.available_after_nanos),
        "unpaid_usd": nanos_to_usd(settlement.unpaid_nanos),
    }


def iso_datetime(value) -> str:
    return value.isoformat().replace("+00:00", "Z")


class RunTierOutput(BaseModel):
    name: str | None
    max_params_b: float
    concurrency: int


class RunConcurrencyOutput(BaseModel):
    in_use: int
    limit: int


class HoldAuthorizeApi(LeanInternalApi):
    """Before a run: may this key run this model now? Reserves money and slots."""

    class AuthorizeInput(BaseModel):
        model_config = ConfigDict(strict=True, extra="ignore")

        api_key: Text
        model: Text
        request_id: Text
        byok: bool = False
        auto_scale: bool = False
        estimate: Estimate | None = None

    class AuthorizeOutput(BaseModel):
        hold_id: str
        account_id: str
        reserved_usd: str
        lease_expires_at: str
        balance_usd: str
        available_usd: str
        tier: RunTierOutput
        concurrency: RunConcurrencyOutput

    @extend_schema(request=AuthorizeInput, responses={200: AuthorizeOutput},
                   summary="Authorize a run (reserve a hold)")
    def post(self, request):
        data = self.AuthorizeInput.model_validate_json(request.body)
        estimate = data.estimate or Estimate()
        authorization = hold_authorize(
            api_key=data.api_key, model_id=data.model, request_id=data.request_id,
            byok=data.byok, auto_scale=data.auto_scale,
            estimate_seconds=as_decimal(estimate.seconds),
            estimate_input_tokens=estimate.input_tokens,
            estimate_max_output_tokens=estimate.max_output_tokens)
        return JsonResponse(authorization_output(authorization))


class HoldSettleApi(LeanInternalApi):
    """After a run: charge what it used."""

    class SettleInput(BaseModel):
        model_config = ConfigDict(strict=True, extra="ignore")

        inference_seconds: Seconds | None = None
        load_seconds: Seconds | None = None
        input_tokens: Tokens | None = None
        output_tokens: Tokens | None = None
        provider_cost_usd: UsdNanos | None = None


    class SettleOutput(BaseModel):
        hold_id: str
        status: str
        charged_usd: str
        billed_seconds: int | None
        balance_usd: str
        available_usd: str
        unpaid_usd: str

    @extend_schema(request=SettleInput, responses={200: SettleOutput}, summary="Settle a hold")
    def post(self, request, hold_id):
        data = self.SettleInput.model_validate_json(request.body)
        if (data.input_tokens is None) != (data.output_tokens is None):
            missing = "output_tokens" if data.output_tokens is None else "input_tokens"
            raise ApplicationError(extra={"fields": {missing: [
                "Send both input_tokens and output_tokens."]}})
        settlement = hold_settle(hold_id=hold_id, usage=Usage(
            inference_seconds=as_decimal(data.inference_seconds),
            load_seconds=as_decimal(data.load_seconds),
            input_tokens=data.input_tokens, output_tokens=data.output_tokens,
            provider_cost_nanos=data.provider_cost_usd))
        metrics.settle_charge_observe(settlement.charged_nanos)
        return JsonResponse(settlement_output(settlement))


class EmptyInput(BaseModel):
    model_config = ConfigDict(extra="ignore")


class HoldReleaseApi(LeanInternalApi):
    class ReleaseOutput(BaseModel):
        hold_id: str
        status: str
        charged_usd: str

    @extend_schema(request=EmptyInput, responses={200: ReleaseOutput},
                   summary="Release a hold: the run did not happen")
    def post(self, request, hold_id):
        EmptyInput.model_validate_json(request.body or b"{}")
        released = hold_release(hold_id=hold_id)
        return JsonResponse({"hold_id": str(released.hold_id), "status": Hold.Status.RELEASED,
                             "charged_usd": "0"})


class HoldHeartbeatApi(LeanInternalApi):
    class HeartbeatOutput(BaseModel):
        hold_id: str
        lease_expires_at: str

    @extend_schema(request=EmptyInput, responses={200: HeartbeatOutput},
                   summary="Extend the lease of a long run")
    def post(self, request, hold_id):
        EmptyInput.model_validate_json(request.body or b"{}")
        extended = hold_heartbeat(hold_id=hold_id)
        return JsonResponse({"hold_id": str(extended.hold_id),
                             "lease_expires_at": iso_datetime(extended.lease_expires_at)})
