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


class ApiKeyCreateApi(InternalApi):
    class InputSerializer(serializers.Serializer):
        name = JsonStringField(max_length=100)
        expires_at = AwareDateTimeField(required=False, allow_null=True, default=None)
        kind = serializers.ChoiceField(choices=ApiKey.Kind.choices, required=False,
                                       default=ApiKey.Kind.INFERENCE,
                                       help_text="inference: runs models; management: the "
                                                 "customer API's money calls.")

        def validate_expires_at(self, value):
            if value is not None and value <= timezone.now():
                raise serializers.ValidationError("Must be in the future.")
            return value

    class OutputSerializer(serializers.Serializer):
        id = serializers.CharField()
        name = serializers.CharField()
        prefix = serializers.CharField()
        key = serializers.CharField(help_text="The full secret, shown only in this response.")
        expires_at = serializers.DateTimeField(allow_null=True)
        kind = serializers.CharField()

    @extend_schema(request=InputSerializer, responses={201: OutputSerializer},
                   summary="Create an API key (the secret is shown once)")
    def post(self, request, account_id):
        account = account_get(account_id=account_id)
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        api_key, secret = api_key_create(account_id=account.id, **data.validated_data)
        body = {"id": str(api_key.id), "name": api_key.name, "prefix": api_key.prefix,
                "key": secret, "expires_at": api_key.expires_at, "kind": api_key.kind}
        return Response(self.OutputSerializer(body).data, status=status.HTTP_201_CREATED)


class ApiKeyRevokeApi(InternalApi):
    @extend_schema(request=None, responses={204: None}, summary="Revoke an API key")
    def delete(self, request, account_id, key_id):
        account = account_get(account_id=account_id)
        api_key_revoke(account_id=account.id, key_id=key_id)
        return Response(status=status.HTTP_204_NO_CONTENT)
