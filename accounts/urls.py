from django.urls import path

from accounts.apis import AccountCreateApi, AccountDetailApi, ApiKeyCreateApi, ApiKeyDetailApi

urlpatterns = [
    path("accounts", AccountCreateApi.as_view(), name="account-create"),
    path("accounts/<str:account_id>", AccountDetailApi.as_view(), name="account-detail"),
    path("accounts/<str:account_id>/api-keys", ApiKeyCreateApi.as_view(),
         name="api-key-create"),
    path("accounts/<str:account_id>/api-keys/<str:key_id>", ApiKeyDetailApi.as_view(),
         name="api-key-revoke"),
]
