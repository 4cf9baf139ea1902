from django.utils import timezone
from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.response import Response

from accounts.models import Account, ApiKey
from accounts.selectors import account_summary
from accounts.serializers import AccountOutputSerializer
from accounts.services import account_get, account_status_set, api_key_create, api_key_revoke
from billing.account_opening import account_create
from config.api import AwareDateTimeField, InternalApi, JsonStringField
from config.money import MoneyField
from metering.key_limits import api_key_spend_limit_set, key_spend_summary
from metering.selectors import account_current


class AccountCreateApi(InternalApi):
    class InputSerializer(serializers.Serializer):
        email = serializers.EmailField(max_length=254)

    class OutputSerializer(serializers.Serializer):
        account_id = serializers.CharField()
        email = serializers.EmailField()
        plan = serializers.CharField()
        balance_usd = serializers.CharField()

    @extend_schema(request=InputSerializer, responses={201: OutputSerializer,
                                                       200: OutputSerializer},
                   summary="Open an account (same email again: the existing account)")
    def post(self, request):
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        account, created = account_create(email=data.validated_data["email"])
        account = account_current(account_id=account.id)
        summary = AccountOutputSerializer(account_summary(account=account)).data
        body = self.OutputSerializer(summary).data
        return Response(body, status=status.HTTP_201_CREATED if created else status.HTTP_200_OK)


class AccountDetailApi(InternalApi):
    class UpdateInputSerializer(serializers.Serializer):
        status = serializers.ChoiceField(choices=Account.Status.choices)
        reason = JsonStringField(max_length=255, required=False, allow_blank=True,
                                       default="")

    @extend_schema(responses=AccountOutputSerializer, summary="Read an account")
    def get(self, request, account_id):
        account = account_current(account_id=account_id)
        return Response(AccountOutputSerializer(account_summary(account=account)).data)

    @extend_schema(request=UpdateInputSerializer, responses=AccountOutputSerializer,
                   summary="Suspend or reinstate an account")
    def patch(self, request, account_id):
        account = account_get(account_id=account_id)
        data = self.UpdateInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        account_status_set(account_id=account.id, **data.validated_data)
        account = account_current(account_id=account.id)
        return Response(AccountOutputSerializer(account_summary(account=account)).data)


def _spend_limit_field(**kwargs):
    return MoneyField(positive=False, allow_null=True,
                      help_text="The key's spend limit per period (null: none).", **kwargs)


def _spend_period_field(**kwargs):
    return serializers.ChoiceField(choices=ApiKey.SpendPeriod.choices, allow_null=True,
                                   help_text="day, week (ISO, from Monday 00:00 UTC), month "
                                   "(UTC) or total (never resets).", **kwargs)


class ApiKeyCreateApi(InternalApi):
    class InputSerializer(serializers.Serializer):
        name = JsonStringField(max_length=100)
        expires_at = AwareDateTimeField(required=False, allow_null=True, default=None)
        spend_limit_usd = _spend_limit_field(required=False, default=None)
        spend_limit_period = _spend_period_field(required=False, default=None)
        kind = serializers.ChoiceField(choices=ApiKey.Kind.choices, required=False,
                                       default=ApiKey.Kind.INFERENCE,
                                       help_text="inference: runs models; management: the "
                                                 "customer API's money calls.")

        def validate_expires_at(self, value):
            if value is not None and value <= timezone.now():
                raise serializers.ValidationError("Must be in the future.")
            return value

        def validate(self, attrs):
            if attrs["spend_limit_period"] is not None and attrs["spend_limit_usd"] is None:
                raise serializers.ValidationError({"spend_limit_period": [
                    "A period needs a limit: send spend_limit_usd too."]})
            return attrs

    class OutputSerializer(serializers.Serializer):
        id = serializers.CharField()
        name = serializers.CharField()
        prefix = serializers.CharField()
        key = serializers.CharField(help_text="The full secret, shown only in this response.")
        expires_at = serializers.DateTimeField(allow_null=True)
        spend_limit_usd = MoneyField(allow_null=True)
        spend_limit_period = serializers.CharField(allow_null=True)
        kind = serializers.CharField()

    @extend_schema(request=InputSerializer, responses={201: OutputSerializer},
                   summary="Create an API key (the secret is shown once)")
    def post(self, request, account_id):
        account = account_get(account_id=account_id)
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        values = data.validated_data
        api_key, secret = api_key_create(
            account_id=account.id, name=values["name"], expires_at=values["expires_at"],
            kind=values["kind"], spend_limit_nanos=values["spend_limit_usd"],
            spend_limit_period=values["spend_limit_period"])
        body = {"id": str(api_key.id), "name": api_key.name, "prefix": api_key.prefix,
                "key": secret, "expires_at": api_key.expires_at, "kind": api_key.kind,
                "spend_limit_usd": api_key.spend_limit_nanos,
                "spend_limit_period": api_key.spend_limit_period or None}
        return Response(self.OutputSerializer(body).data, status=status.HTTP_201_CREATED)


class ApiKeyRevokeApi(InternalApi):
    @extend_schema(request=None, responses={204: None}, summary="Revoke an API key")
    def delete(self, request, account_id, key_id):
        account = account_get(account_id=account_id)
        api_key_revoke(account_id=account.id, key_id=key_id)
        return Response(status=status.HTTP_204_NO_CONTENT)


class ApiKeyDetailApi(ApiKeyRevokeApi):
    """One key: read it (never the secret), change or remove its spend limit, revoke it."""

    class UpdateInputSerializer(serializers.Serializer):
        spend_limit_usd = _spend_limit_field(required=False)
        spend_limit_period = _spend_period_field(required=False)

        def validate(self, attrs):
            if not attrs:
                raise serializers.ValidationError({"spend_limit_usd": [
                    "Send spend_limit_usd, spend_limit_period or both."]})
            return attrs

    class OutputSerializer(serializers.Serializer):
        id = serializers.CharField()
        name = serializers.CharField()
        prefix = serializers.CharField()
        kind = serializers.CharField()
        created_at = serializers.DateTimeField()
        last_used_at = serializers.DateTimeField(allow_null=True)
        revoked_at = serializers.DateTimeField(allow_null=True)
        spend_limit_usd = MoneyField(source="spend_limit_nanos", allow_null=True)
        spend_limit_period = serializers.CharField(allow_null=True)
        spent_usd = MoneyField(source="spent_nanos")
        period_resets_at = serializers.DateTimeField(allow_null=True)

    @extend_schema(responses=OutputSerializer, summary="Read an API key and its spend")
    def get(self, request, account_id, key_id):
        account = account_get(account_id=account_id)
        summary = key_spend_summary(account_id=account.id, key_id=key_id)
        return Response(self.OutputSerializer(summary).data)

    @extend_schema(request=UpdateInputSerializer, responses=OutputSerializer,
                   summary="Set, change or remove an API key's spend limit")
    def patch(self, request, account_id, key_id):
        account = account_get(account_id=account_id)
        key_spend_summary(account_id=account.id, key_id=key_id)  # 404 before a 400
        data = self.UpdateInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        values = data.validated_data
        changes = {}
        if "spend_limit_usd" in values:
            changes["limit_nanos"] = values["spend_limit_usd"]
        if values.get("spend_limit_period") is not None:
            changes["period"] = values["spend_limit_period"]
        api_key_spend_limit_set(account_id=account.id, key_id=key_id, **changes)
        summary = key_spend_summary(account_id=account.id, key_id=key_id)
        return Response(self.OutputSerializer(summary).data)
