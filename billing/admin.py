from django import forms
from django.contrib import admin, messages
from django.template.response import TemplateResponse

from billing.models import (
    BillingProfile,
    Card,
    CreditLot,
    Dispute,
    LedgerEntry,
    LedgerTransaction,
    Payment,
    Plan,
    Purchase,
    Reversal,
    StripeEvent,
    Subscription,
)
from billing.refunds import purchase_refund
from config.admin_bases import ReadOnlyAdmin
from config.api import ApplicationError
from config.money import MoneyFormatError, nanos_to_usd, usd_to_nanos
from metering.admin import CatalogAdmin


@admin.register(Plan)
class PlanAdmin(CatalogAdmin):
    list_display = ["code", "name", "monthly_price_nanos", "credit_grant_nanos",
                    "free_grant_interval_days", "closed_requests_per_second"]

    def get_readonly_fields(self, request, obj=None):
        return ["code"] if obj else []

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(CreditLot)
class CreditLotAdmin(ReadOnlyAdmin):
    list_display = ["id", "account", "source", "amount_nanos", "remaining_nanos",
                    "granted_at", "expires_at"]
    list_filter = ["source"]
    search_fields = ["account__user__email", "account__id"]
    list_select_related = ["account__user"]


class RefundForm(forms.Form):
    amount_usd = forms.CharField(
        required=False, label="Amount (USD)",
        help_text="Leave empty to refund everything not refunded yet. A partial amount "
        "needs a single purchase selected.")
    reason = forms.CharField(max_length=200)

    def clean_amount_usd(self):
        text = self.cleaned_data["amount_usd"].strip()
        if not text:
            return None
        try:
            return usd_to_nanos(text)
        except MoneyFormatError as exc:
            raise forms.ValidationError(str(exc)) from exc


@admin.register(Purchase)
class PurchaseAdmin(ReadOnlyAdmin):
    list_display = ["id", "account", "kind", "amount_nanos", "refunded_nanos", "reference",
                    "purchased_at"]
    list_filter = ["kind"]
    search_fields = ["account__user__email", "reference"]
    list_select_related = ["account__user"]
    actions = ["refund_through_stripe"]

    def has_refund_permission(self, request):
        return request.user.has_perm("billing.change_purchase")

    @admin.action(description="Refund through Stripe…", permissions=["refund"])
    def refund_through_stripe(self, request, queryset):
        """Refund the selected purchases (after a form asking how much and why). The
        unspent credit of each purchase's lot is clawed back; every refund is logged."""
        form = RefundForm(request.POST if "apply" in request.POST else None)
        if form.is_bound and form.is_valid():
            amount = form.cleaned_data["amount_usd"]
            if amount is not None and queryset.count() != 1:
                self.message_user(request, "A partial amount needs exactly one purchase.",
                                  messages.ERROR)
                return None
            for purchase in queryset:
                try:
                    reversal = purchase_refund(purchase_id=purchase.id, amount_nanos=amount,
                                               reason=form.cleaned_data["reason"])
                except ApplicationError as exc:
                    self.message_user(request, f"{purchase}: {exc.message}", messages.ERROR)
                    continue
                summary = (f"Refunded {nanos_to_usd(reversal.amount_nanos)} USD "
                           f"({reversal.stripe_id}); clawed back "
                           f"{nanos_to_usd(reversal.clawed_nanos)} USD of unspent credit. "
                           f"Reason: {reversal.reason}")
                self.log_change(request, purchase, summary)
                self.message_user(request, f"{purchase}: {summary}", messages.SUCCESS)
            return None
        return TemplateResponse(request, "admin/billing/purchase/refund.html", {
            **self.admin_site.each_context(request), "title": "Refund through Stripe",
            "purchases": queryset, "form": form, "opts": self.model._meta,
            "action_checkbox_name": admin.helpers.ACTION_CHECKBOX_NAME,
        })


class LedgerEntryInline(admin.TabularInline):
    model = LedgerEntry
    fields = ["book", "account", "lot", "amount_nanos"]
    readonly_fields = fields
    extra = 0
    can_delete = False

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(LedgerTransaction)
class LedgerTransactionAdmin(ReadOnlyAdmin):
    list_display = ["id", "account", "kind", "memo", "created_at"]
    list_filter = ["kind"]
    search_fields = ["account__user__email", "memo"]
    list_select_related = ["account__user"]
    inlines = [LedgerEntryInline]


@admin.register(BillingProfile)
class BillingProfileAdmin(ReadOnlyAdmin):
    list_display = ["account", "stripe_customer_id", "auto_reload_enabled",
                    "auto_reload_paused_at", "auto_scale_max_monthly_nanos"]
    search_fields = ["account__user__email", "stripe_customer_id"]
    list_select_related = ["account__user"]


@admin.register(Card)
class CardAdmin(ReadOnlyAdmin):
    list_display = ["id", "account", "brand", "last4", "created_at", "removed_at"]
    search_fields = ["account__user__email", "stripe_payment_method_id"]
    list_select_related = ["account__user"]


@admin.register(Payment)
class PaymentAdmin(ReadOnlyAdmin):
    list_display = ["id", "account", "purpose", "status", "amount_nanos",
                    "stripe_payment_intent_id", "failure_code", "created_at"]
    list_filter = ["purpose", "status"]
    search_fields = ["account__user__email", "stripe_payment_intent_id", "id"]
    list_select_related = ["account__user"]


@admin.register(StripeEvent)
class StripeEventAdmin(ReadOnlyAdmin):
    list_display = ["stripe_id", "type", "received_at", "processed_at", "outcome", "attempts"]
    list_filter = ["type"]
    search_fields = ["stripe_id"]


@admin.register(Subscription)
class SubscriptionAdmin(ReadOnlyAdmin):
    list_display = ["stripe_subscription_id", "account", "plan", "status",
                    "cancel_at_period_end", "current_period_end"]
    list_filter = ["status", "plan"]
    search_fields = ["account__user__email", "stripe_subscription_id"]
    list_select_related = ["account__user"]


@admin.register(Reversal)
class ReversalAdmin(ReadOnlyAdmin):
    list_display = ["stripe_id", "account", "kind", "amount_nanos", "clawed_nanos",
                    "created_at"]
    list_filter = ["kind"]
    search_fields = ["account__user__email", "stripe_id"]
    list_select_related = ["account__user"]


@admin.register(Dispute)
class DisputeAdmin(ReadOnlyAdmin):
    """A dispute suspends its account; staff lift the suspension on the account once
    they have reviewed it (also after a dispute won)."""

    list_display = ["stripe_dispute_id", "account", "status", "amount_nanos", "reason",
                    "suspended_at", "closed_at"]
    list_filter = ["status"]
    search_fields = ["account__user__email", "stripe_dispute_id"]
    list_select_related = ["account__user"]
