from django.urls import path

from billing.apis import GrantCreateApi, PurchaseCreateApi

urlpatterns = [
    path("accounts/<str:account_id>/purchases", PurchaseCreateApi.as_view(),
         name="purchase-create"),
    path("accounts/<str:account_id>/grants", GrantCreateApi.as_view(), name="grant-create"),
]
