"""Output shapes shared by several APIs."""

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from config.money import MoneyField


@extend_schema_field(OpenApiTypes.NUMBER)
class ParamsBField(serializers.Field):
    """A model size in billions of parameters, as a JSON number (70, or 7.5)."""

    def to_representation(self, value):
        return value


class TierOutputSerializer(serializers.Serializer):
    name = serializers.CharField(allow_null=True)
    max_params_b = ParamsBField()
    concurrency = serializers.IntegerField()


class ConcurrencyOutputSerializer(serializers.Serializer):
    in_use = serializers.IntegerField()
    limit = serializers.IntegerField()


class AccountOutputSerializer(serializers.Serializer):
    account_id = serializers.CharField()
    email = serializers.EmailField()
    plan = serializers.CharField()
    status = serializers.CharField()
    balance_usd = MoneyField(source="balance_nanos")
    held_usd = MoneyField(source="held_nanos")
    available_usd = MoneyField(source="available_nanos")
    purchased_last_4_weeks_usd = MoneyField(source="purchased_window_nanos")
    tier = TierOutputSerializer()
    concurrency = ConcurrencyOutputSerializer()
