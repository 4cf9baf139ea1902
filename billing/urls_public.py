from django.urls import path

from billing.apis import CreditsApi

urlpatterns = [
    path("credits", CreditsApi.as_view(), name="credits"),
]
