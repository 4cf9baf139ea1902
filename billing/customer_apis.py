"""Customer-facing payment APIs under /api/v1/, authenticated with the customer's API key:
saved cards, credit purchases, auto-reload, auto-scale and the plan subscription."""

import re

from django.conf import settings
from django.utils import timezone
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_serializer
from rest_framework import exceptions, serializers, status
from rest_framework.permissions import IsAuthenticated
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.authentication import CustomerKeyAuthentication, InsufficientScope
from accounts.models import Account, ApiKey
from billing import selectors, subscriptions
from billing.auto_reload import AutoReloadSettings, auto_reload_settings_set
from billing.cards import card_default_set, card_remove, card_save, card_setup_start
from billing.errors import PaymentFailed
from billing.models import Payment, Purchase
from billing.purchases import purchase_checkout_start, purchase_confirm, purchase_start
from config.api import ApplicationError
from config.money import MoneyField
from metering.auto_scale import auto_scale_settings_set

# Printable ASCII without spaces; the Stripe idempotency key made from it stays under 255.
IDEMPOTENCY_KEY = re.compile(r"[\x21-\x7e]{1,200}")


class ApiKeyRequired(ApplicationError):
    status = 401
    code = "unauthorized"
    message = "An API key is required: Authorization: Bearer <key>."


class CustomerApi(APIView):
    """Base for /api/v1/: the customer's API key identifies the account."""

    authentication_classes = [CustomerKeyAuthentication]
    permission_classes = [IsAuthenticated]
    # The kinds of key a call takes. By default only a management key: the calls here
    # spend money or change money settings, which a key an app embeds must never do.
    key_kinds: tuple[str, ...] = (ApiKey.Kind.MANAGEMENT,)

    def check_permissions(self, request):
        super().check_permissions(request)
        if request.auth.kind not in self.key_kinds:
            raise InsufficientScope()

    def handle_exception(self, exc):
        if isinstance(exc, exceptions.NotAuthenticated):
            exc = ApiKeyRequired()
        return super().handle_exception(exc)

    def account_id(self, request):
        return request.auth.account_id


# --- Cards --------------------------------------------------------------------------------


class CardOutputSerializer(serializers.Serializer):
    id = serializers.UUIDField()
    brand = serializers.CharField()
    last4 = serializers.CharField()
    exp_month = serializers.IntegerField(allow_null=True)
    exp_year = serializers.IntegerField(allow_null=True)
    default = serializers.BooleanField()
    created_at = serializers.DateTimeField()


def _card_body(card, default_card_id) -> dict:
    return CardOutputSerializer({
        "id": card.id, "brand": card.brand, "last4": card.last4, "exp_month": card.exp_month,
        "exp_year": card.exp_year, "default": card.id == default_card_id,
        "created_at": card.created_at}).data


class CardSetupIntentCreateApi(CustomerApi):
    class OutputSerializer(serializers.Serializer):
        setup_intent_id = serializers.CharField(source="id")
        client_secret = serializers.CharField()
        publishable_key = serializers.CharField()

    @extend_schema(request=None, responses={201: OutputSerializer},
                   summary="Start saving a card (confirm the SetupIntent with Stripe.js)")
    def post(self, request):
        setup = card_setup_start(account_id=self.account_id(request))
        body = {"id": setup.id, "client_secret": setup.client_secret,
                "publishable_key": settings.STRIPE_PUBLISHABLE_KEY}
        return Response(self.OutputSerializer(body).data, status=status.HTTP_201_CREATED)


class CardListApi(CustomerApi):
    class InputSerializer(serializers.Serializer):
        setup_intent_id = serializers.CharField(max_length=255)

    @extend_schema(responses=CardOutputSerializer(many=True), summary="List saved cards")
    def get(self, request):
        account_id = self.account_id(request)
        default_id = selectors.billing_profile_get(account_id=account_id).default_card_id
        return Response([_card_body(card, default_id)
                         for card in selectors.account_cards(account_id=account_id)])

    @extend_schema(request=InputSerializer, responses={201: CardOutputSerializer},
                   summary="Save the card of a succeeded SetupIntent")
    def post(self, request):
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        account_id = self.account_id(request)
        card = card_save(account_id=account_id,
                                  setup_intent_id=data.validated_data["setup_intent_id"])
        default_id = selectors.billing_profile_get(account_id=account_id).default_card_id
        return Response(_card_body(card, default_id), status=status.HTTP_201_CREATED)


class CardDetailApi(CustomerApi):
    @extend_schema(request=None, responses={204: None}, summary="Remove a saved card")
    def delete(self, request, card_id):
        card_remove(account_id=self.account_id(request), card_id=card_id)
        return Response(status=status.HTTP_204_NO_CONTENT)


class CardDefaultApi(CustomerApi):
    @extend_schema(request=None, responses=CardOutputSerializer,
                   summary="Make a saved card the default")
    def post(self, request, card_id):
        card = card_default_set(account_id=self.account_id(request), card_id=card_id)
        return Response(_card_body(card, card.id))


# --- Purchases ----------------------------------------------------------------------------


class PaymentOutputSerializer(serializers.Serializer):
    payment_id = serializers.UUIDField(source="id")
    status = serializers.CharField()
    amount_usd = MoneyField(source="amount_nanos")
    payment_intent_id = serializers.CharField(source="stripe_payment_intent_id", allow_null=True)
    client_secret = serializers.CharField(allow_null=True, help_text="For Stripe.js, while "
                                          "the customer still has to act.")
    next_action = serializers.CharField(allow_null=True)
    failure = serializers.DictField(allow_null=True)
    purchase = serializers.DictField(allow_null=True)


def _payment_body(payment: Payment, intent=None) -> dict:
    needs_customer = payment.status == Payment.Status.REQUIRES_ACTION and intent is not None
    purchase = None
    if payment.purchase_id:
        purchase_row = Purchase.objects.select_related("lot").get(id=payment.purchase_id)
        purchase = {"purchase_id": str(purchase_row.id),
                    "amount_usd": MoneyField().to_representation(purchase_row.amount_nanos),
                    "expires_at": purchase_row.lot.expires_at.isoformat()}
    return PaymentOutputSerializer({
        "id": payment.id, "status": payment.status, "amount_nanos": payment.amount_nanos,
        "stripe_payment_intent_id": payment.stripe_payment_intent_id,
        "client_secret": intent.client_secret if needs_customer else None,
        "next_action": (intent.next_action_type or None) if needs_customer else None,
        "failure": ({"code": payment.failure_code, "message": payment.failure_message}
                    if payment.status == Payment.Status.FAILED else None),
        "purchase": purchase,
    }).data


def _payment_response(payment: Payment, intent, created: bool) -> Response:
    if payment.status == Payment.Status.FAILED:
        raise PaymentFailed(payment.failure_message or None, extra={
            "reason": payment.failure_code, "payment_id": str(payment.id)})
    return Response(_payment_body(payment, intent),
                    status=status.HTTP_201_CREATED if created else status.HTTP_200_OK)


class PurchaseListApi(CustomerApi):
    class InputSerializer(serializers.Serializer):
        amount_usd = MoneyField()
        card_id = serializers.UUIDField(required=False, allow_null=True, default=None)
        confirm = serializers.BooleanField(required=False, default=True)

    class OutputSerializer(serializers.Serializer):
        purchase_id = serializers.UUIDField(source="id")
        kind = serializers.CharField()
        amount_usd = MoneyField(source="amount_nanos")
        refunded_usd = MoneyField(source="refunded_nanos", positive=False)
        credit_usd = MoneyField(source="lot.amount_nanos")
        credit_remaining_usd = MoneyField(source="lot.remaining_nanos", positive=False)
        reference = serializers.CharField()
        purchased_at = serializers.DateTimeField()
        expires_at = serializers.DateTimeField(source="lot.expires_at")
        receipt = serializers.SerializerMethodField()

        def get_receipt(self, purchase) -> dict | None:
            payment = getattr(purchase, "payment", None)
            if payment is None:
                return None
            card = payment.card
            return {"payment_id": str(payment.id),
                    "card": f"{card.brand} {card.last4}".strip() if card else None,
                    "charge_id": payment.stripe_charge_id or None,
                    "receipt_url": payment.receipt_url or None}

    @extend_schema(responses=OutputSerializer(many=True),
                   summary="List purchases, newest first, with receipt details")
    def get(self, request):
        purchases = selectors.account_purchases(account_id=self.account_id(request))
        return Response(self.OutputSerializer(purchases, many=True).data)

    @extend_schema(
        request=InputSerializer,
        responses={201: PaymentOutputSerializer, 200: PaymentOutputSerializer},
        parameters=[OpenApiParameter(
            "Idempotency-Key", str, OpenApiParameter.HEADER, required=False,
            description="Optional, up to 200 printable characters: the same key again "
                        "answers with the first purchase (200) and never charges twice.")],
        summary="Buy credit with a saved card (or confirm it with Stripe.js)")
    def post(self, request):
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        client_key = request.headers.get("Idempotency-Key")
        if client_key is not None and not IDEMPOTENCY_KEY.fullmatch(client_key):
            raise ApplicationError(extra={"fields": {"Idempotency-Key": [
                "Up to 200 printable characters, without spaces."]}})
        payment, intent, created = purchase_start(
            account_id=self.account_id(request), amount_nanos=data.validated_data["amount_usd"],
            card_id=data.validated_data["card_id"], confirm=data.validated_data["confirm"],
            client_key=client_key)
        return _payment_response(payment, intent, created=created)


class PurchaseConfirmApi(CustomerApi):
    @extend_schema(request=None, responses=PaymentOutputSerializer,
                   summary="Confirm a purchase, or learn how its confirmation went")
    def post(self, request, payment_id):
        payment, intent = purchase_confirm(account_id=self.account_id(request),
                                                    payment_id=payment_id)
        return _payment_response(payment, intent, created=False)


class PurchaseCheckoutCreateApi(CustomerApi):
    class InputSerializer(serializers.Serializer):
        amount_usd = MoneyField()
        success_url = serializers.URLField(max_length=500)
        cancel_url = serializers.URLField(max_length=500)

    class OutputSerializer(serializers.Serializer):
        payment_id = serializers.UUIDField()
        checkout_url = serializers.URLField()

    @extend_schema(request=InputSerializer, responses={201: OutputSerializer},
                   summary="Buy credit on a Stripe Checkout page")
    def post(self, request):
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        payment, session = purchase_checkout_start(
            account_id=self.account_id(request), amount_nanos=data.validated_data["amount_usd"],
            success_url=data.validated_data["success_url"],
            cancel_url=data.validated_data["cancel_url"])
        return Response(self.OutputSerializer({"payment_id": payment.id,
                                               "checkout_url": session.url}).data,
                        status=status.HTTP_201_CREATED)


# --- Auto-reload and auto-scale -----------------------------------------------------------


class AutoReloadSettingsApi(CustomerApi):
    class InputSerializer(serializers.Serializer):
        enabled = serializers.BooleanField(required=False)
        threshold_usd = MoneyField(positive=False, required=False)
        amount_usd = MoneyField(required=False)
        monthly_max_usd = MoneyField(positive=False, required=False)
        card_id = serializers.UUIDField(required=False, allow_null=True)

    class OutputSerializer(serializers.Serializer):
        enabled = serializers.BooleanField()
        paused = serializers.BooleanField()
        paused_reason = serializers.CharField()
        threshold_usd = MoneyField(source="threshold_nanos", positive=False)
        amount_usd = MoneyField(source="amount_nanos")
        monthly_max_usd = MoneyField(source="monthly_max_nanos", positive=False)
        card_id = serializers.UUIDField(allow_null=True)
        charged_this_month_usd = MoneyField(source="charged_this_month_nanos", positive=False)

    def _body(self, account_id):
        return self.OutputSerializer(
            selectors.auto_reload_summary(account_id=account_id, now=timezone.now())).data

    @extend_schema(responses=OutputSerializer, summary="Read the auto-reload settings")
    def get(self, request):
        return Response(self._body(self.account_id(request)))

    @extend_schema(request=InputSerializer, responses=OutputSerializer,
                   summary="Change the auto-reload settings (missing fields keep their value)")
    def put(self, request):
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        account_id = self.account_id(request)
        current = selectors.auto_reload_summary(account_id=account_id, now=timezone.now())
        given = data.validated_data
        wanted = AutoReloadSettings(
            enabled=given.get("enabled", current["enabled"]),
            threshold_nanos=given.get("threshold_usd", current["threshold_nanos"]),
            amount_nanos=given.get("amount_usd", current["amount_nanos"]),
            monthly_max_nanos=given.get("monthly_max_usd", current["monthly_max_nanos"]),
            card_id=given.get("card_id", current["card_id"]))
        auto_reload_settings_set(account_id=account_id, settings_=wanted)
        return Response(self._body(account_id))


class AutoScaleSettingsApi(CustomerApi):
    class InputSerializer(serializers.Serializer):
        max_monthly_spend_usd = MoneyField(positive=False)

    class OutputSerializer(serializers.Serializer):
        max_monthly_spend_usd = MoneyField(source="max_monthly_spend_nanos", positive=False)
        charged_this_month_usd = MoneyField(source="charged_this_month_nanos", positive=False)
        card_id = serializers.UUIDField(allow_null=True, help_text="The card auto-scale "
                                        "charges: the default card.")

    def _body(self, account_id):
        return self.OutputSerializer(
            selectors.auto_scale_summary(account_id=account_id, now=timezone.now())).data

    @extend_schema(responses=OutputSerializer, summary="Read the auto-scale settings")
    def get(self, request):
        return Response(self._body(self.account_id(request)))

    @extend_schema(request=InputSerializer, responses=OutputSerializer,
                   summary="Set the most auto-scale may spend in a UTC calendar month")
    def put(self, request):
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        account_id = self.account_id(request)
        auto_scale_settings_set(
            account_id=account_id,
            max_monthly_nanos=data.validated_data["max_monthly_spend_usd"])
        return Response(self._body(account_id))


# --- Plan subscription --------------------------------------------------------------------


class SubscriptionDetailApi(CustomerApi):
    class InputSerializer(serializers.Serializer):
        plan = serializers.SlugField(max_length=16, required=False, default="payg")

    class CancelInputSerializer(serializers.Serializer):
        at_period_end = serializers.BooleanField(required=False, default=True)

    class OutputSerializer(serializers.Serializer):
        plan = serializers.CharField()
        subscription_id = serializers.CharField(allow_null=True)
        status = serializers.CharField(allow_null=True)
        cancel_at_period_end = serializers.BooleanField()
        current_period_end = serializers.DateTimeField(allow_null=True)

    def _body(self, request):
        account_id = self.account_id(request)
        sub = selectors.account_subscription(account_id=account_id)
        plan = Account.objects.values_list("plan_id", flat=True).get(id=account_id)
        return self.OutputSerializer({
            "plan": plan, "subscription_id": sub.stripe_subscription_id if sub else None,
            "status": sub.status if sub else None,
            "cancel_at_period_end": sub.cancel_at_period_end if sub else False,
            "current_period_end": sub.current_period_end if sub else None}).data

    @extend_schema(responses=OutputSerializer, summary="Read the plan and its subscription")
    def get(self, request):
        return Response(self._body(request))

    @extend_schema(request=InputSerializer, responses={201: OutputSerializer},
                   summary="Subscribe to the pay-as-you-go plan")
    def post(self, request):
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        subscriptions.plan_subscribe(account_id=self.account_id(request),
                                     plan_code=data.validated_data["plan"])
        return Response(self._body(request), status=status.HTTP_201_CREATED)

    @extend_schema(request=CancelInputSerializer, responses={200: OutputSerializer},
                   summary="Cancel the subscription (at the end of the paid period by default)")
    def delete(self, request):
        data = self.CancelInputSerializer(data=request.data or {})
        data.is_valid(raise_exception=True)
        subscriptions.plan_subscription_cancel(
            account_id=self.account_id(request),
            at_period_end=data.validated_data["at_period_end"])
        return Response(self._body(request))


# Nested serializers are all called Input/Output: give their schema components the API's name.
for _api in (CardSetupIntentCreateApi, CardListApi, PurchaseListApi, PurchaseCheckoutCreateApi,
             AutoReloadSettingsApi, AutoScaleSettingsApi, SubscriptionDetailApi):
    for _nested in ("InputSerializer", "CancelInputSerializer", "OutputSerializer"):
        if _nested in vars(_api):
            extend_schema_serializer(
                component_name=f"Customer{_api.__name__.removesuffix('Api')}"
                               f"{_nested.removesuffix('Serializer')}")(getattr(_api, _nested))
