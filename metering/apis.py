import re
from decimal import Decimal

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema, extend_schema_field
from rest_framework import serializers
from rest_framework.response import Response

from accounts.selectors import params_b_number
from billing.money import MoneyField, nanos_to_usd
from config.api import InternalApi
from metering.models import InferenceModel
from metering.selectors import model_get, size_class_for
from metering.services import (
    ModelNotFound,
    Usage,
    hold_authorize,
    hold_heartbeat,
    hold_release,
    hold_settle,
    model_upsert,
)

MODEL_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@+/-]{0,199}$")
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
        params_b = serializers.DecimalField(max_digits=10, decimal_places=3, required=False,
                                            min_value=Decimal("0.001"))
        provider = serializers.CharField(max_length=50, required=False)
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
        if not MODEL_ID_RE.match(model_id):
            raise serializers.ValidationError({"model_id": [
                "Letters, digits and . _ : @ + / -, at most 200 characters."]})
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


class StrictBooleanField(serializers.BooleanField):
    """A JSON true/false: not "yes", not 1."""

    def to_internal_value(self, data):
        if isinstance(data, bool):
            return data
        self.fail("invalid", input=data)


class StrictCharField(serializers.CharField):
    """A JSON string: not a number that would be read as one (42 and "42" are different
    request ids to the caller, and must not silently become the same)."""

    def to_internal_value(self, data):
        if not isinstance(data, str):
            self.fail("invalid")
        return super().to_internal_value(data)


class StrictIntegerField(serializers.IntegerField):
    """A JSON number that is a whole number: not "1200", not true."""

    def to_internal_value(self, data):
        if isinstance(data, str | bool):
            self.fail("invalid")
        return super().to_internal_value(data)


MAX_ESTIMATE_SECONDS = Decimal(30 * 24 * 3600)
MAX_TOKENS = 10**9


@extend_schema_field(OpenApiTypes.NUMBER)
class SecondsField(serializers.Field):
    """A duration in seconds: a non-negative JSON number, any precision."""

    default_error_messages = {
        "invalid": "Must be a number of seconds.",
        "negative": "Must not be negative.",
        "too_large": f"Must be at most {MAX_ESTIMATE_SECONDS} seconds.",
    }

    def to_internal_value(self, data) -> Decimal:
        if isinstance(data, bool) or not isinstance(data, int | float):
            self.fail("invalid")
        value = Decimal(repr(data)) if isinstance(data, float) else Decimal(data)
        if not value.is_finite():
            self.fail("invalid")
        if value < 0:
            self.fail("negative")
        if value > MAX_ESTIMATE_SECONDS:
            self.fail("too_large")
        return value

    def to_representation(self, value):
        return float(value)


class EstimateInputSerializer(serializers.Serializer):
    seconds = SecondsField(required=False)
    input_tokens = StrictIntegerField(required=False, min_value=0, max_value=MAX_TOKENS)
    max_output_tokens = StrictIntegerField(required=False, min_value=0,
                                                 max_value=MAX_TOKENS)


def authorization_output(authorization) -> dict:
    return {
        "hold_id": str(authorization.hold_id),
        "account_id": str(authorization.account_id),
        "reserved_usd": nanos_to_usd(authorization.reserved_nanos),
        "lease_expires_at": serializers.DateTimeField().to_representation(
            authorization.lease_expires_at),
        "balance_usd": nanos_to_usd(authorization.balance_nanos),
        "available_usd": nanos_to_usd(max(0, authorization.balance_nanos
                                          - authorization.held_nanos)),
        "tier": {"name": authorization.tier_name,
                 "max_params_b": params_b_number(authorization.tier_max_params_b),
                 "concurrency": authorization.tier_concurrency},
        "concurrency": {"in_use": authorization.slots_in_use,
                        "limit": authorization.tier_concurrency},
    }


class HoldAuthorizeApi(InternalApi):
    """Before a run: may this key run this model now? Reserves money and slots."""

    class InputSerializer(serializers.Serializer):
        api_key = StrictCharField(max_length=200, trim_whitespace=False)
        model = StrictCharField(max_length=200)
        request_id = StrictCharField(max_length=200)
        byok = StrictBooleanField(required=False, default=False)
        auto_scale = StrictBooleanField(required=False, default=False)
        estimate = EstimateInputSerializer(required=False, allow_null=True, default=None)

    @extend_schema(request=InputSerializer, responses={200: dict},
                   summary="Authorize a run (reserve a hold)")
    def post(self, request):
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        values = data.validated_data
        estimate = values["estimate"] or {}
        authorization = hold_authorize(
            api_key=values["api_key"], model_id=values["model"],
            request_id=values["request_id"], byok=values["byok"],
            auto_scale=values["auto_scale"], estimate_seconds=estimate.get("seconds"),
            estimate_input_tokens=estimate.get("input_tokens"),
            estimate_max_output_tokens=estimate.get("max_output_tokens"), request=request)
        return Response(authorization_output(authorization))


class HoldSettleApi(InternalApi):
    """After a run: charge what it used."""

    class InputSerializer(serializers.Serializer):
        inference_seconds = SecondsField(required=False)
        load_seconds = SecondsField(required=False)
        input_tokens = StrictIntegerField(required=False, min_value=0,
                                                max_value=MAX_TOKENS)
        output_tokens = StrictIntegerField(required=False, min_value=0,
                                                 max_value=MAX_TOKENS)
        provider_cost_usd = MoneyField(required=False, positive=False)

        def validate(self, attrs):
            if ("input_tokens" in attrs) != ("output_tokens" in attrs):
                missing = "output_tokens" if "input_tokens" in attrs else "input_tokens"
                raise serializers.ValidationError({missing: ["Send both token counts."]})
            return attrs

    @extend_schema(request=InputSerializer, responses={200: dict}, summary="Settle a hold")
    def post(self, request, hold_id):
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        values = data.validated_data
        result = hold_settle(hold_id=hold_id, usage=Usage(
            inference_seconds=values.get("inference_seconds"),
            load_seconds=values.get("load_seconds"),
            input_tokens=values.get("input_tokens"), output_tokens=values.get("output_tokens"),
            provider_cost_nanos=values.get("provider_cost_usd")))
        return Response(result)


class EmptyInputSerializer(serializers.Serializer):
    pass


class HoldReleaseApi(InternalApi):
    @extend_schema(request=EmptyInputSerializer, responses={200: dict},
                   summary="Release a hold: the run did not happen")
    def post(self, request, hold_id):
        if not isinstance(request.data, dict):
            raise serializers.ValidationError(["Send a JSON object."])
        return Response(hold_release(hold_id=hold_id))


class HoldHeartbeatApi(InternalApi):
    @extend_schema(request=EmptyInputSerializer, responses={200: dict},
                   summary="Extend the lease of a long run")
    def post(self, request, hold_id):
        if not isinstance(request.data, dict):
            raise serializers.ValidationError(["Send a JSON object."])
        result = hold_heartbeat(hold_id=hold_id)
        result["lease_expires_at"] = serializers.DateTimeField().to_representation(
            result["lease_expires_at"])
        return Response(result)
