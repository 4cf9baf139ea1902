"""The console's own pages: the account page that brings a customer's money together,
the actions staff take on it (each with a reason form), the audit log, and the Stripe
events page with its reprocess action. Model pages of the other apps live in their
admin.py; the account, purchase and Stripe event pages are taken over here."""

import json
from dataclasses import dataclass
from typing import Any

from django import forms as django_forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html
from django.utils.safestring import mark_safe

from accounts.admin import AccountAdmin
from accounts.models import Account, ApiKey
from billing.admin import PurchaseAdmin, StripeEventAdmin
from billing.admin import RefundForm as ListRefundForm
from billing.models import Purchase, StripeEvent
from config.admin_bases import usd
from config.api import ApplicationError
from console import services
from console.forms import AdjustForm, GrantForm, ReasonForm, RefundForm
from console.models import StaffAction
from console.selectors import account_overview, account_search
from metering.models import Hold


@dataclass(frozen=True)
class ActionSpec:
    title: str
    permission: str
    form: type[django_forms.Form]
    explanation: str
    button: str
    target_model: type | None = None
    danger: bool = False


ACCOUNT_ACTIONS: dict[str, ActionSpec] = {
    "grant": ActionSpec(
        "Grant credit", "grant_credit", GrantForm,
        "Adds a promotional credit lot (booked against promotional grants). It expires like "
        "purchased credit and does not count toward the unlock tier.", "Grant credit"),
    "adjust": ActionSpec(
        "Adjust credit", "adjust_credit", AdjustForm,
        "A correction booked against staff adjustments: a positive amount adds a lot, a "
        "negative one takes credit back, soonest-expiring first.", "Adjust credit"),
    "suspend": ActionSpec(
        "Suspend account", "suspend_account", ReasonForm,
        "Every run of the account is refused (account_suspended) from the next authorize on. "
        "Runs already authorized may still settle.", "Suspend", danger=True),
    "reinstate": ActionSpec(
        "Reinstate account", "suspend_account", ReasonForm,
        "The account may run models again at once.", "Reinstate"),
    "resume_auto_reload": ActionSpec(
        "Resume auto-reload", "resume_auto_reload", ReasonForm,
        "Auto-reload resumes with the customer's settings; if the balance is already below "
        "the threshold, a reload is charged at once.", "Resume auto-reload"),
    "refund": ActionSpec(
        "Refund purchase", "refund_purchase", RefundForm,
        "Refunds through Stripe. The unspent credit of the purchase's lot is clawed back up "
        "to the amount refunded, and the tier is recomputed at once.", "Refund",
        target_model=Purchase, danger=True),
    "release_hold": ActionSpec(
        "Force-release hold", "release_hold", ReasonForm,
        "Voids the hold without a charge, as the gateway's release does: its reserved money "
        "and slots are freed. A later settle of this run is refused.", "Release hold",
        target_model=Hold, danger=True),
    "revoke_key": ActionSpec(
        "Revoke API key", "revoke_key", ReasonForm,
        "The key fails authorize from its next call. This cannot be undone.", "Revoke key",
        target_model=ApiKey, danger=True),
}


def _run_account_action(*, request: HttpRequest, action: str, account: Account, target,
                        data: dict[str, Any]) -> services.StaffActionResult:
    actor = request.user
    reason = data["reason"]
    if action == "grant":
        return services.staff_credit_grant(actor=actor, account_id=account.id,
                                           amount_nanos=data["amount_usd"], reason=reason)
    if action == "adjust":
        return services.staff_credit_adjust(actor=actor, account_id=account.id,
                                            amount_nanos=data["amount_usd"], reason=reason)
    if action == "suspend":
        return services.staff_account_suspend(actor=actor, account_id=account.id, reason=reason)
    if action == "reinstate":
        return services.staff_account_reinstate(actor=actor, account_id=account.id,
                                                reason=reason)
    if action == "resume_auto_reload":
        return services.staff_auto_reload_resume(actor=actor, account_id=account.id,
                                                 reason=reason)
    if action == "refund":
        return services.staff_purchase_refund(actor=actor, purchase_id=target.id,
                                              amount_nanos=data["amount_usd"], reason=reason)
    if action == "release_hold":
        return services.staff_hold_release(actor=actor, hold_id=target.id, reason=reason)
    if action == "revoke_key":
        return services.staff_api_key_revoke(actor=actor, key_id=target.id, reason=reason)
    raise Http404


def _describe_target(target) -> str:
    if isinstance(target, Purchase):
        return (f"{target.get_kind_display()} {target.reference}: {usd(target.amount_nanos)} "
                f"paid, {usd(target.refunded_nanos)} refunded, on "
                f"{target.purchased_at:%Y-%m-%d %H:%M} UTC")
    if isinstance(target, Hold):
        return (f"Hold {target.id} on {target.model_id}: {usd(target.reserved_nanos)} "
                f"reserved, {target.weight} slot(s), opened {target.created_at:%Y-%m-%d %H:%M}"
                f" UTC, lease until {target.lease_expires_at:%H:%M:%S}")
    if isinstance(target, ApiKey):
        return f"Key “{target.name}” ({target.prefix}…), created {target.created_at:%Y-%m-%d}"
    return ""


admin.site.unregister(Account)


@admin.register(Account)
class ConsoleAccountAdmin(AccountAdmin):
    list_display = ["email", "id", "plan", "status", "balance_usd", "available_usd",
                    "held_usd", "tier", "created_at"]
    search_help_text = "Email, account id, API key prefix (bk_…) or Stripe customer id (cus_…)"
    search_fields = ["user__email"]  # shows the search box; account_search does the work
    list_per_page = 50
    change_form_template = "admin/accounts/account/console_change_form.html"

    def get_search_results(self, request, queryset, search_term):
        return account_search(queryset=queryset, term=search_term), True

    def has_change_permission(self, request, obj=None):
        # The account's figures change only through the actions below.
        return False

    @admin.display(description="balance", ordering="balance_nanos")
    def balance_usd(self, obj):
        return usd(obj.balance_nanos)

    @admin.display(description="available")
    def available_usd(self, obj):
        return usd(obj.balance_nanos - obj.held_nanos)

    @admin.display(description="held", ordering="held_nanos")
    def held_usd(self, obj):
        return usd(obj.held_nanos)

    def get_urls(self):
        return [
            path("<uuid:account_id>/action/<slug:action>/",
                 self.admin_site.admin_view(self.action_view), name="console_account_action"),
            *super().get_urls(),
        ]

    def change_view(self, request, object_id, form_url="", extra_context=None):
        try:
            overview = account_overview(account_id=object_id)
        except (Account.DoesNotExist, ValueError, django_forms.ValidationError):
            return super().change_view(request, object_id, form_url, extra_context)
        allowed = {name for name, spec in ACCOUNT_ACTIONS.items()
                   if request.user.has_perm(f"console.{spec.permission}")}
        context = {"overview": overview, "allowed_actions": allowed,
                   "grant_limit_usd": services.support_grant_limit_nanos() // 10**9,
                   **(extra_context or {})}
        return super().change_view(request, object_id, form_url, context)

    def action_view(self, request, account_id, action):
        spec = ACCOUNT_ACTIONS.get(action)
        if spec is None:
            raise Http404("No such action.")
        # Refused on the server, whatever the page showed.
        if not request.user.has_perm(f"console.{spec.permission}"):
            raise PermissionDenied
        account = get_object_or_404(Account.objects.select_related("user", "tier"),
                                    id=account_id)
        target = None
        if spec.target_model is not None:
            target_id = request.POST.get("target") or request.GET.get("target")
            try:
                target = spec.target_model.objects.get(id=target_id, account=account)
            except (spec.target_model.DoesNotExist, ValueError, django_forms.ValidationError):
                raise Http404("No such item on this account.") from None
        form = spec.form(request.POST if request.method == "POST" else None)
        if form.is_bound and form.is_valid():
            try:
                result = _run_account_action(request=request, action=action, account=account,
                                             target=target, data=form.cleaned_data)
            except ApplicationError as exc:
                field = "amount_usd" if "amount_usd" in form.fields and getattr(
                    exc, "code", "") in ("insufficient_credits", "invalid_request") else None
                form.add_error(field, exc.message)
            else:
                self.message_user(request, f"{result.summary}. Reason: {result.audit.reason}",
                                  messages.SUCCESS)
                return HttpResponseRedirect(
                    reverse("admin:accounts_account_change", args=[account.id]))
        account.refresh_from_db()
        context = {
            **self.admin_site.each_context(request),
            "title": spec.title, "spec": spec, "form": form, "account": account,
            "target": target, "target_description": _describe_target(target),
            "opts": self.model._meta, "original": account,
            "available_nanos": account.balance_nanos - account.held_nanos,
            "grant_limit_usd": services.support_grant_limit_nanos() // 10**9,
            "show_grant_limit": action == "grant" and not request.user.has_perm(
                "console.grant_credit_unlimited"),
        }
        return TemplateResponse(request, "admin/console/action_form.html", context)


admin.site.unregister(Purchase)


@admin.register(Purchase)
class ConsolePurchaseAdmin(PurchaseAdmin):
    """Refunds from the purchase list go through the console's refund service: Finance
    only, with a reason, in the audit log."""

    def has_refund_permission(self, request):
        return request.user.has_perm("console.refund_purchase")

    @admin.action(description="Refund through Stripe…", permissions=["refund"])
    def refund_through_stripe(self, request, queryset):
        form = ListRefundForm(request.POST if "apply" in request.POST else None)
        if form.is_bound and form.is_valid():
            amount = form.cleaned_data["amount_usd"]
            if amount is not None and queryset.count() != 1:
                self.message_user(request, "A partial amount needs exactly one purchase.",
                                  messages.ERROR)
                return None
            for purchase in queryset:
                try:
                    result = services.staff_purchase_refund(
                        actor=request.user, purchase_id=purchase.id, amount_nanos=amount,
                        reason=form.cleaned_data["reason"])
                except ApplicationError as exc:
                    self.message_user(request, f"{purchase}: {exc.message}", messages.ERROR)
                    continue
                self.message_user(request, f"{purchase}: {result.summary}", messages.SUCCESS)
            return None
        return TemplateResponse(request, "admin/billing/purchase/refund.html", {
            **self.admin_site.each_context(request), "title": "Refund through Stripe",
            "purchases": queryset, "form": form, "opts": self.model._meta,
            "action_checkbox_name": admin.helpers.ACTION_CHECKBOX_NAME,
        })


admin.site.unregister(StripeEvent)


@admin.register(StripeEvent)
class ConsoleStripeEventAdmin(StripeEventAdmin):
    list_display = ["stripe_id", "type", "state", "outcome", "attempts", "error_brief",
                    "received_at", "processed_at"]
    list_filter = ["type", ("processed_at", admin.EmptyFieldListFilter)]
    search_fields = ["stripe_id", "type", "outcome", "last_error"]
    fields = ["stripe_id", "type", "created_at", "received_at", "processed_at", "outcome",
              "attempts", "last_error", "payload_pretty"]
    readonly_fields = fields
    change_form_template = "admin/billing/stripeevent/console_change_form.html"

    def has_change_permission(self, request, obj=None):
        return False

    @admin.display(description="state")
    def state(self, obj):
        if obj.processed_at:
            return "processed"
        return "failed" if obj.last_error else "pending"

    @admin.display(description="error")
    def error_brief(self, obj):
        return (obj.last_error[:80] + "…") if len(obj.last_error) > 80 else obj.last_error

    @admin.display(description="payload")
    def payload_pretty(self, obj):
        return format_html('<pre class="console-json">{}</pre>',
                           json.dumps(obj.payload, indent=2, sort_keys=True))

    def get_urls(self):
        return [
            path("<int:event_id>/reprocess/", self.admin_site.admin_view(self.reprocess_view),
                 name="console_stripe_event_reprocess"),
            *super().get_urls(),
        ]

    def change_view(self, request, object_id, form_url="", extra_context=None):
        context = {"can_reprocess": request.user.has_perm("console.reprocess_stripe_event"),
                   **(extra_context or {})}
        return super().change_view(request, object_id, form_url, context)

    def reprocess_view(self, request, event_id):
        if not request.user.has_perm("console.reprocess_stripe_event"):
            raise PermissionDenied
        event = get_object_or_404(StripeEvent, id=event_id)
        form = ReasonForm(request.POST if request.method == "POST" else None)
        if form.is_bound and form.is_valid():
            try:
                result = services.staff_stripe_event_reprocess(
                    actor=request.user, event_id=event.id, reason=form.cleaned_data["reason"])
            except ApplicationError as exc:
                form.add_error(None, exc.message)
            else:
                self.message_user(request, result.summary, messages.SUCCESS)
                return HttpResponseRedirect(
                    reverse("admin:billing_stripeevent_change", args=[event.id]))
        event.refresh_from_db()
        spec = ActionSpec("Reprocess Stripe event", "reprocess_stripe_event", ReasonForm,
                          "Runs the stored event through the webhook's processing again. "
                          "An event is applied once: a processed one is never re-applied.",
                          "Reprocess")
        return TemplateResponse(request, "admin/console/action_form.html", {
            **self.admin_site.each_context(request), "title": spec.title, "spec": spec,
            "form": form, "target": event,
            "target_description": f"{event.type} {event.stripe_id}: {event.attempts} "
                                  f"attempt(s); last error: {event.last_error or '—'}",
            "opts": self.model._meta, "original": event,
            "cancel_url": reverse("admin:billing_stripeevent_change", args=[event.id]),
        })


@admin.register(StaffAction)
class StaffActionAdmin(admin.ModelAdmin):
    """The audit log: read-only here, and refused UPDATE and DELETE by the database."""

    list_display = ["when", "actor_email", "account_link", "summary", "reason"]
    list_filter = ["kind", "actor_email"]
    search_fields = ["actor_email", "reason", "summary", "target", "account__user__email",
                     "=account__id"]
    search_help_text = "Staff email, reason, what was done, target or customer email"
    list_select_related = ["account__user"]
    date_hierarchy = "created_at"
    fields = ["created_at", "actor_email", "kind", "account_link", "target", "summary",
              "reason", "before_after"]
    readonly_fields = fields

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    @admin.display(description="when", ordering="created_at")
    def when(self, obj):
        return f"{obj.created_at:%Y-%m-%d %H:%M}"

    @admin.display(description="account")
    def account_link(self, obj):
        if obj.account_id is None:
            return "—"
        return format_html('<a href="{}">{}</a>',
                           reverse("admin:accounts_account_change", args=[obj.account_id]),
                           obj.account.user.email)

    @admin.display(description="before → after")
    def before_after(self, obj):
        keys = list(dict.fromkeys([*obj.before, *obj.after]))
        rows = [format_html('<tr{}><th>{}</th><td>{}</td><td>{}</td></tr>',
                            format_html(' class="{}"', "changed")
                            if obj.before.get(key) != obj.after.get(key) else "",
                            key, obj.before.get(key, "—"), obj.after.get(key, "—"))
                for key in keys]
        return format_html('<table class="console-diff"><thead><tr><th></th><th>before</th>'
                           '<th>after</th></tr></thead><tbody>{}</tbody></table>',
                           mark_safe("".join(rows)))

from console import tables  # noqa: E402,F401  (the table pages)
