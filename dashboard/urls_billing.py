"""The money pages' routes (included by dashboard/urls.py)."""

from django.urls import path

from dashboard import views_billing as views

urlpatterns = [
    path("credits/", views.credits_view, name="credits"),
    path("credits/setup-intent", views.card_setup_intent_view, name="card_setup_intent"),
    path("credits/payments/<uuid:payment_id>/confirm", views.purchase_confirm_view,
         name="purchase_confirm"),
    path("credits/purchases/<uuid:purchase_id>/", views.receipt_view, name="receipt"),
    path("cards/", views.cards_view, name="cards"),
    path("cards/add", views.card_add_view, name="card_add"),
    path("cards/<uuid:card_id>/default", views.card_default_view, name="card_default"),
    path("cards/<uuid:card_id>/remove", views.card_remove_view, name="card_remove"),
    path("auto-reload/", views.auto_reload_view, name="auto_reload"),
    path("plan/", views.plan_view, name="plan"),
    path("plan/subscribe", views.plan_subscribe_view, name="plan_subscribe"),
    path("plan/cancel", views.plan_cancel_view, name="plan_cancel"),
]
