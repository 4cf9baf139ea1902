from django.urls import include, path

from dashboard import views

app_name = "dashboard"

urlpatterns = [
    path("", views.overview, name="overview"),
    path("usage/", views.usage, name="usage"),
    path("usage.csv", views.usage_csv, name="usage_csv"),
    path("keys/", views.keys, name="keys"),
    path("keys/<uuid:key_id>/revoke/", views.key_revoke, name="key_revoke"),
    path("keys/<uuid:key_id>/limit/", views.key_limit, name="key_limit"),
    path("models/", views.models, name="models"),
    path("", include("dashboard.urls_billing")),
]
