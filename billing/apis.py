from django.utils import timezone
from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.response import Response

from accounts.models import ApiKey
from accounts.selectors import account_summary
from accounts.serializers import ConcurrencyOutputSerializer, TierOutputSerializer
from accounts.services import account_get
from billing.credit import credit_grant, purchase_record
from billing.customer_apis import CustomerApi
from billing.ledger import Book
from billing.models import Purchase
from billing.selectors import auto_reload_summary
from config.api import AwareDateTimeField, InternalApi, JsonStringField
from config.money import MoneyField
from metering.selectors import account_current


class PurchaseCreateApi(InternalApi):
    """A purchase paid outside Stripe (an enterprise invoice, a bank transfer)."""

    class InputSerializer(serializers.Serializer):
        amount_usd = MoneyField()
        reference = JsonStringField(max_length=255)

    class OutputSerializer(serializers.Serializer):
        purchase_id = serializers.CharField(source="id")
        amount_usd = MoneyField(source="amount_nanos")
        reference = serializers.CharField()
        purchased_at = serializers.DateTimeField()
        expires_at = serializers.DateTimeField(source="lot.expires_at")

    @extend_schema(request=InputSerializer, responses={201: OutputSerializer,
                                                       200: OutputSerializer},
                   summary="Record a purchase paid outside Stripe (idempotent by reference)")
    def post(self, request, account_id):
        account = account_get(account_id=account_id)
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        purchase, created = purchase_record(
            account_id=account.id, amount_nanos=data.validated_data["amount_usd"],
            reference=data.validated_data["reference"], kind=Purchase.Kind.INVOICE,
            cash_book=Book.EXTERNAL_CASH,
        )
        return Response(self.OutputSerializer(purchase).data,
                        status=status.HTTP_201_CREATED if created else status.HTTP_200_OK)


class GrantCreateApi(InternalApi):
    class InputSerializer(serializers.Serializer):
        amount_usd = MoneyField()
        reason = JsonStringField(max_length=255)
        expires_at = AwareDateTimeField(required=False, allow_null=True, default=None)

        def validate_expires_at(self, value):
            if value is not None and value <= timezone.now():
                raise serializers.ValidationError("Must be in the future.")
            return value

    class OutputSerializer(serializers.Serializer):
        grant_id = serializers.CharField(source="id")
        amount_usd = MoneyField(source="amount_nanos")
        reason = serializers.CharField()
        expires_at = serializers.DateTimeField()

    @extend_schema(request=InputSerializer, responses={201: OutputSerializer},
                   summary="Grant credit (spendable, does not count toward the tier)")
    def post(self, request, account_id):
        account = account_get(account_id=account_id)
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        lot, _ = credit_grant(account_id=account.id,
                              amount_nanos=data.validated_data["amount_usd"],
                              reason=data.validated_data["reason"],
                              expires_at=data.validated_data["expires_at"])
        return Response(self.OutputSerializer(lot).data, status=status.HTTP_201_CREATED)


class CreditsApi(CustomerApi):
    """The customer's own credit, read with the customer's API key."""

    key_kinds = (ApiKey.Kind.INFERENCE, ApiKey.Kind.MANAGEMENT)

    class OutputSerializer(serializers.Serializer):
        class AutoReloadSerializer(serializers.Serializer):
            enabled = serializers.BooleanField()
            paused = serializers.BooleanField()
            threshold_usd = MoneyField(source="threshold_nanos")
            amount_usd = MoneyField(source="amount_nanos")
            monthly_max_usd = MoneyField(source="monthly_max_nanos")

        balance_usd = MoneyField(source="balance_nanos")
        available_usd = MoneyField(source="available_nanos")
        plan = serializers.CharField()
        tier = TierOutputSerializer()
        concurrency = ConcurrencyOutputSerializer()
        auto_reload = AutoReloadSerializer()

    @extend_schema(responses=OutputSerializer, summary="Your credit, tier and auto-reload")
    def get(self, request):
        now = timezone.now()
        account = account_current(account_id=self.account_id(request), now=now)
        body = {**account_summary(account=account),
                "auto_reload": auto_reload_summary(account_id=account.id, now=now)}
        return Response(self.OutputSerializer(body).data)
