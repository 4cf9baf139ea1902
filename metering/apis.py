import re
from decimal import Decimal

from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.response import Response

from accounts.selectors import params_b_number
from billing.money import MoneyField, nanos_to_usd
from config.api import InternalApi, JsonNumberField, JsonStringField
from metering.models import InferenceModel
from metering.selectors import model_get, size_class_for
from metering.services import ModelNotFound, model_upsert

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
