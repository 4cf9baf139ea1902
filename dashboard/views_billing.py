"""The money pages: buy credits (saved card or a new one through Stripe Elements), lots,
purchase history and receipts, cards, auto-reload and auto-scale, the plan.

Thin views: a form validates, one service of billing/ (the same the customer API calls)
acts, the page renders. Every object is looked up within the signed-in customer's account,
so another account's ids are 404 and change nothing."""

import uuid

from django.conf import settings
from django.contrib import messages
from django.core.paginator import Paginator
from django.http import Http404, JsonResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from billing import auto_reload, cards, purchases, selectors, subscriptions
from billing.models import Payment, Subscription
from config.api import ApplicationError
from dashboard import selectors_billing as reads
from dashboard.access import customer_view
from dashboard.forms_billing import (
    DEFAULT_CARD,
    NEW_CARD,
    AutoReloadForm,
    AutoScaleForm,
    CardSaveForm,
    CreditPurchaseForm,
    PurchaseAmountForm,
    dollars_text,
)
from metering import auto_scale
from metering.selectors import account_current

PURCHASES_PER_PAGE = 20
# How a form's field is named in a service's refusal ("fields" of an ApplicationError).
_SERVICE_FIELDS = {"amount_usd": "amount", "monthly_max_usd": "monthly_max"}


def _account_id(request):
    return request.account.id


def _stripe_context() -> dict:
    return {"payments_configured": reads.payments_configured(),
            "stripe_js_url": reads.stripe_js_url(),
            "stripe_publishable_key": settings.STRIPE_PUBLISHABLE_KEY}


def _service_error_to_form(form, exc: ApplicationError, default_field=None) -> None:
    """Put a service's refusal next to the field it is about (or on top of the form)."""
    fields = exc.extra.get("fields") if isinstance(exc.extra, dict) else None
    if fields:
        for name, reasons in fields.items():
            field = _SERVICE_FIELDS.get(name, name)
            for reason in reasons:
                form.add_error(field if field in form.fields else None, reason)
        return
    form.add_error(default_field, exc.message)


def _money(nanos: int) -> str:
    return f"${dollars_text(nanos)}"


# --- Credits ------------------------------------------------------------------------------


def _credits_page(request, *, form, status=200, pending_payment=None):
    now = timezone.now()
    account = account_current(account_id=request.account.id, now=now)
    next_tier = reads.next_tier(purchased_nanos=account.purchased_window_nanos)
    purchases = Paginator(reads.account_purchases_query(account_id=account.id),
                          PURCHASES_PER_PAGE).get_page(request.GET.get("page"))
    context = {
        "account": account,
        "tier": account.tier,
        "next_tier": next_tier,
        "next_tier_needs": (next_tier.min_purchased_nanos - account.purchased_window_nanos
                            if next_tier else None),
        "form": form,
        "lots": reads.account_lot_rows(account_id=account.id, now=now),
        "purchases": purchases,
        "pending_payment": pending_payment,
        "new_card_value": NEW_CARD,
        "has_cards": len(form.fields["card"].choices) > 1,
        "nav_section": "dashboard:credits",
        **_stripe_context(),
    }
    return render(request, "dashboard/credits/credits.html", context, status=status)


def _purchase_form(request, data=None, *, payment: Payment | None = None):
    """The purchase form; after a payment that did not go through (`payment`), filled
    with its amount and card, so that trying again is one click."""
    account_id = _account_id(request)
    cards = reads.account_cards(account_id=account_id)
    default_id = reads.default_card_id(account_id=account_id)
    initial = {"idempotency_token": uuid.uuid4(), "amount": "25.00"}
    if payment is not None:
        initial["amount"] = dollars_text(payment.amount_nanos)
        if any(card.id == payment.card_id for card in cards):
            initial["card"] = str(payment.card_id)
    return CreditPurchaseForm(data, cards=cards, default_card_id=default_id, initial=initial)


@customer_view
@require_http_methods(["GET", "POST"])
def credits_view(request):
    if request.method == "GET":
        return _credits_page(request, form=_purchase_form(request))
    form = _purchase_form(request, request.POST)
    if not form.is_valid():
        return _credits_page(request, form=form, status=400)
    account_id = _account_id(request)
    data = form.cleaned_data
    try:
        card_id = data["card"]
        if card_id == NEW_CARD:
            card_id = cards.card_save(account_id=account_id,
                                         setup_intent_id=data["setup_intent_id"]).id
        payment, intent, _ = purchases.purchase_start(
            account_id=account_id, amount_nanos=data["amount"], card_id=card_id,
            confirm=True, client_key=f"dashboard:{data['idempotency_token']}")
    except ApplicationError as exc:
        _service_error_to_form(form, exc, default_field="card")
        return _credits_page(request, form=form, status=exc.status)
    return _purchase_outcome(request, form=form, payment=payment, intent=intent)


def _card_error(form, message: str) -> None:
    """The reason shown next to the card field. After the cardholder's authentication the
    page posts no purchase form, so the form may never have been cleaned; add_error
    needs the cleaned state it then lacks."""
    if not hasattr(form, "cleaned_data"):
        form.cleaned_data = {}
    form.add_error("card", message)


def _purchase_outcome(request, *, form, payment: Payment, intent):
    if payment.status == Payment.Status.SUCCEEDED:
        purchase = payment.purchase
        messages.success(request, f"{_money(purchase.amount_nanos)} of credit added. It "
                                  f"expires on {purchase.lot.expires_at:%B %-d, %Y}.")
        return redirect(f"{reverse('dashboard:credits')}?added={purchase.id}#lots")
    if payment.status in (Payment.Status.FAILED, Payment.Status.CANCELED):
        reason = payment.failure_message or "The payment did not go through."
        _card_error(form, f"{reason} No credit was added and nothing was charged.")
        return _credits_page(request, form=form, status=402)
    if payment.status == Payment.Status.REQUIRES_ACTION and intent is not None \
            and intent.client_secret:
        # The bank wants the cardholder to authenticate: Stripe.js does it on the page,
        # then the page asks the service how it went.
        return _credits_page(request, form=form, pending_payment={
            "id": payment.id, "client_secret": intent.client_secret,
            "amount": payment.amount_nanos})
    messages.info(request, "Your payment is being processed. The credit appears here as "
                           "soon as the bank confirms it.")
    return redirect("dashboard:credits")


@customer_view
@require_POST
def purchase_confirm_view(request, payment_id):
    """After the cardholder authenticated on the page: record how the payment went."""
    account_id = _account_id(request)
    payment = reads.account_payment_get(account_id=account_id, payment_id=payment_id)
    form = _purchase_form(request, payment=payment)
    try:
        payment, intent = purchases.purchase_confirm(account_id=account_id,
                                                    payment_id=payment_id)
    except ApplicationError as exc:
        _card_error(form, exc.message)
        return _credits_page(request, form=form, status=exc.status)
    if payment.status == Payment.Status.REQUIRES_ACTION:
        _card_error(form, "The payment was not authenticated. No credit was added.")
        return _credits_page(request, form=form, status=402)
    return _purchase_outcome(request, form=form, payment=payment, intent=intent)


@customer_view
@require_POST
def card_setup_intent_view(request):
    """For the card form's script: a SetupIntent to confirm with Stripe.js. With an
    amount (buying with a new card) the amount is checked first, so a bad amount sets up
    no card."""
    if "amount" in request.POST:
        amount_form = PurchaseAmountForm(request.POST)
        if not amount_form.is_valid():
            return JsonResponse({"message": "Check the amount.",
                                 "fields": amount_form.errors.get_json_data()},
                                status=400)
    try:
        setup = cards.card_setup_start(account_id=_account_id(request))
    except ApplicationError as exc:
        return JsonResponse({"code": exc.code, "message": exc.message}, status=exc.status)
    return JsonResponse({"setup_intent_id": setup.id, "client_secret": setup.client_secret},
                        status=201)


@customer_view
@require_GET
def receipt_view(request, purchase_id):
    purchase = reads.account_purchase_get(account_id=_account_id(request),
                                          purchase_id=purchase_id)
    payment = getattr(purchase, "payment", None)
    return render(request, "dashboard/credits/receipt.html", {
        "purchase": purchase, "payment": payment, "card": payment.card if payment else None,
        "reversals": list(purchase.reversals.all()), "account": request.account,
        "net_nanos": purchase.amount_nanos - purchase.refunded_nanos,
        "nav_section": "dashboard:credits"})


# --- Cards --------------------------------------------------------------------------------


def _cards_page(request, *, form=None, status=200, template="dashboard/cards/cards.html",
                **extra):
    account_id = _account_id(request)
    return render(request, template, {
        "cards": reads.account_cards(account_id=account_id),
        "default_card_id": reads.default_card_id(account_id=account_id),
        "form": form or CardSaveForm(), "nav_section": "dashboard:cards",
        **_stripe_context(), **extra},
        status=status)


@customer_view
@require_GET
def cards_view(request):
    return _cards_page(request)


@customer_view
@require_http_methods(["GET", "POST"])
def card_add_view(request):
    if request.method == "GET":
        return _cards_page(request, template="dashboard/cards/card_add.html")
    form = CardSaveForm(request.POST)
    if not form.is_valid():
        form.add_error(None, "Enter the card's details above (this needs JavaScript).")
        return _cards_page(request, form=form, status=400,
                           template="dashboard/cards/card_add.html")
    try:
        card = cards.card_save(account_id=_account_id(request),
                                  setup_intent_id=form.cleaned_data["setup_intent_id"])
    except ApplicationError as exc:
        form.add_error(None, exc.message)
        return _cards_page(request, form=form, status=exc.status,
                           template="dashboard/cards/card_add.html")
    messages.success(request, f"{(card.brand or 'Card').title()} ending {card.last4} saved.")
    return redirect("dashboard:cards")


@customer_view
@require_POST
def card_default_view(request, card_id):
    account_id = _account_id(request)
    card = reads.account_card_get(account_id=account_id, card_id=card_id)
    try:
        cards.card_default_set(account_id=account_id, card_id=card.id)
    except ApplicationError as exc:
        messages.error(request, exc.message)
        return redirect("dashboard:cards")
    messages.success(request, f"{(card.brand or 'Card').title()} ending {card.last4} is now "
                              "your default card.")
    return redirect("dashboard:cards")


@customer_view
@require_http_methods(["GET", "POST"])
def card_remove_view(request, card_id):
    account_id = _account_id(request)
    card = reads.account_card_get(account_id=account_id, card_id=card_id)
    if request.method == "GET":
        profile = selectors.billing_profile_get(account_id=account_id)
        return render(request, "dashboard/cards/card_remove.html", {
            "card": card, "nav_section": "dashboard:cards",
            "is_default": profile.default_card_id == card.id,
            "used_by_auto_reload": profile.auto_reload_enabled and (
                profile.auto_reload_card_id == card.id
                or (profile.auto_reload_card_id is None and profile.default_card_id == card.id))})
    try:
        cards.card_remove(account_id=account_id, card_id=card.id)
    except ApplicationError as exc:
        messages.error(request, exc.message)
        return redirect("dashboard:cards")
    messages.success(request, f"{(card.brand or 'Card').title()} ending {card.last4} removed.")
    return redirect("dashboard:cards")


# --- Auto-reload and auto-scale -------------------------------------------------------------


def _auto_reload_page(request, *, reload_form=None, scale_form=None, status=200):
    account_id = _account_id(request)
    now = timezone.now()
    reload_summary = selectors.auto_reload_summary(account_id=account_id, now=now)
    scale_summary = selectors.auto_scale_summary(account_id=account_id, now=now)
    profile = selectors.billing_profile_get(account_id=account_id)
    cards = reads.account_cards(account_id=account_id)
    default_id = profile.default_card_id
    if reload_form is None:
        reload_form = AutoReloadForm(cards=cards, default_card_id=default_id, initial={
            "enabled": reload_summary["enabled"],
            "threshold": reload_summary["threshold_nanos"],
            "amount": reload_summary["amount_nanos"],
            "monthly_max": reload_summary["monthly_max_nanos"],
            "card": str(reload_summary["card_id"] or DEFAULT_CARD)})
    if scale_form is None:
        scale_form = AutoScaleForm(initial={
            "max_monthly_spend": scale_summary["max_monthly_spend_nanos"]})
    return render(request, "dashboard/billing/auto_reload.html", {
        "reload": reload_summary, "scale": scale_summary, "profile": profile,
        "reload_form": reload_form, "scale_form": scale_form, "cards": cards,
        "reload_share": _share(reload_summary["charged_this_month_nanos"],
                               reload_summary["monthly_max_nanos"]),
        "scale_share": _share(scale_summary["charged_this_month_nanos"],
                              scale_summary["max_monthly_spend_nanos"]),
        "month_name": f"{now:%B %Y}", "nav_section": "dashboard:auto_reload"}, status=status)


def _share(spent: int, cap: int) -> int:
    """Percent of a cap used, for the meter (0-100)."""
    if cap <= 0:
        return 100 if spent > 0 else 0
    return min(100, spent * 100 // cap)


@customer_view
@require_http_methods(["GET", "POST"])
def auto_reload_view(request):
    if request.method == "GET":
        return _auto_reload_page(request)
    account_id = _account_id(request)
    if request.POST.get("form") == "auto_scale":
        scale_form = AutoScaleForm(request.POST)
        if not scale_form.is_valid():
            return _auto_reload_page(request, scale_form=scale_form, status=400)
        auto_scale.auto_scale_settings_set(
            account_id=account_id,
            max_monthly_nanos=scale_form.cleaned_data["max_monthly_spend"])
        messages.success(request, "Auto-scale settings saved.")
        return redirect("dashboard:auto_reload")
    reload_form = AutoReloadForm(request.POST, cards=reads.account_cards(account_id=account_id),
                                 default_card_id=reads.default_card_id(account_id=account_id))
    if not reload_form.is_valid():
        return _auto_reload_page(request, reload_form=reload_form, status=400)
    data = reload_form.cleaned_data
    wanted = auto_reload.AutoReloadSettings(
        enabled=data["enabled"], threshold_nanos=data["threshold"],
        amount_nanos=data["amount"], monthly_max_nanos=data["monthly_max"],
        card_id=uuid.UUID(data["card"]) if data["card"] else None)
    try:
        auto_reload.auto_reload_settings_set(account_id=account_id, settings_=wanted)
    except ApplicationError as exc:
        _service_error_to_form(reload_form, exc,
                               default_field="card" if exc.code == "no_card" else None)
        return _auto_reload_page(request, reload_form=reload_form, status=exc.status)
    if data["enabled"]:
        messages.success(request, f"Auto-reload is on: when your balance falls below "
                                  f"{_money(data['threshold'])}, {_money(data['amount'])} is "
                                  "added.")
    else:
        messages.success(request, "Auto-reload is off.")
    return redirect("dashboard:auto_reload")


# --- Plan ---------------------------------------------------------------------------------


def _plan_page(request, *, error=None, status=200):
    account = request.account
    subscription = selectors.account_subscription(account_id=account.id)
    live = subscription if subscription is not None and subscription.is_live else None
    profile = selectors.billing_profile_get(account_id=account.id)
    return render(request, "dashboard/billing/plan.html", {
        "account": account, "plans": reads.plans(), "subscription": live,
        "last_subscription": subscription, "error": error,
        "has_card": cards.usable_card(profile.default_card_id) is not None,
        "nav_section": "dashboard:plan", **_stripe_context()}, status=status)


@customer_view
@require_GET
def plan_view(request):
    return _plan_page(request)


@customer_view
@require_POST
def plan_subscribe_view(request):
    plan_code = request.POST.get("plan", "")
    if not reads.plans() or plan_code not in {p.code for p in reads.plans()}:
        return _plan_page(request, error="Choose a plan.", status=400)
    try:
        subscription = subscriptions.plan_subscribe(account_id=_account_id(request),
                                                    plan_code=plan_code)
    except ApplicationError as exc:
        return _plan_page(request, error=exc.message, status=exc.status)
    messages.success(request, f"You are on the {subscription.plan.name} plan.")
    return redirect("dashboard:plan")


@customer_view
@require_http_methods(["GET", "POST"])
def plan_cancel_view(request):
    account_id = _account_id(request)
    subscription = (Subscription.objects.filter(account_id=account_id,
                                                status__in=Subscription.LIVE_STATUSES)
                    .select_related("plan").order_by("-created_at").first())
    if subscription is None:
        raise Http404("No live subscription")
    if request.method == "GET":
        return render(request, "dashboard/billing/plan_cancel.html",
                      {"subscription": subscription,
                       "nav_section": "dashboard:plan"})
    try:
        subscription = subscriptions.plan_subscription_cancel(account_id=account_id,
                                                              at_period_end=True)
    except ApplicationError as exc:
        return _plan_page(request, error=exc.message, status=exc.status)
    if subscription.current_period_end:
        messages.success(request, f"Your {subscription.plan.name} plan ends on "
                                  f"{subscription.current_period_end:%B %-d, %Y}; you keep "
                                  "it until then.")
    else:
        messages.success(request, "Your subscription is canceled.")
    return redirect("dashboard:plan")
