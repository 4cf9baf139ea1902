"""/api/v1/: the customer's payment APIs (API-key authentication)."""

from django.urls import path

from billing.customer_apis import (
    AutoReloadSettingsApi,
    AutoScaleSettingsApi,
    CardDefaultApi,
    CardDetailApi,
    CardListApi,
    CardSetupIntentCreateApi,
    PurchaseCheckoutCreateApi,
    PurchaseConfirmApi,
    PurchaseListApi,
    SubscriptionDetailApi,
)

urlpatterns = [
    path("cards", CardListApi.as_view(), name="card-list"),
    path("cards/setup-intents", CardSetupIntentCreateApi.as_view(), name="card-setup-intent"),
    path("cards/<str:card_id>", CardDetailApi.as_view(), name="card-detail"),
    path("cards/<str:card_id>/default", CardDefaultApi.as_view(), name="card-default"),
    path("purchases", PurchaseListApi.as_view(), name="customer-purchase-list"),
    path("purchases/checkout", PurchaseCheckoutCreateApi.as_view(),
         name="customer-purchase-checkout"),
    path("purchases/<str:payment_id>/confirm", PurchaseConfirmApi.as_view(),
         name="customer-purchase-confirm"),
    path("auto-reload", AutoReloadSettingsApi.as_view(), name="auto-reload-settings"),
    path("auto-scale", AutoScaleSettingsApi.as_view(), name="auto-scale-settings"),
    path("subscription", SubscriptionDetailApi.as_view(), name="subscription-detail"),
]
