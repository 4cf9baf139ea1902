"""The price, size-class, tier, plan and model tables in the console: amounts typed in
dollars, validated (no negative price; tiers and size classes that rise without gaps),
each edit saved with a reason in the audit log. Saving still clears the run path's
catalog caches (metering.catalog), so an edit prices the next run in this process and in
every other one within the caches' few seconds."""

from decimal import Decimal
from itertools import pairwise

from django import forms
from django.contrib import admin

from billing.admin import PlanAdmin
from billing.models import Plan
from config.admin_bases import UsdNanosField, usd
from console.services import staff_table_edit_record
from metering.admin import InferenceModelAdmin, PricingPolicyAdmin, SizeClassAdmin
from metering.models import InferenceModel, PricingPolicy, SizeClass
from ratelimits.admin import TierAdmin
from ratelimits.models import Tier

MONEY_LABELS = {
    "nanos_per_second": "Price per second (USD)",
    "input_nanos_per_mtok": "Input price per million tokens (USD)",
    "output_nanos_per_mtok": "Output price per million tokens (USD)",
    "byok_fee_nanos": "BYOK fee per run (USD)",
    "monthly_price_nanos": "Monthly price (USD)",
    "credit_grant_nanos": "Credit granted (USD)",
    "min_purchased_nanos": "Purchased in the last 4 weeks, at least (USD)",
}


def _json_value(value):
    if isinstance(value, Decimal | int | float | bool) or value is None:
        return value if not isinstance(value, Decimal) else str(value)
    return str(value)


class AuditedTableAdmin:
    """Mixin for a table admin: dollar fields, a required reason, an audit row per save,
    and no deletes from the console (a row retired without a reason would leave no
    trace)."""

    def formfield_for_dbfield(self, db_field, request, **kwargs):
        if db_field.name in MONEY_LABELS:
            return UsdNanosField(label=MONEY_LABELS[db_field.name],
                                 required=not db_field.null, help_text=db_field.help_text
                                 .replace(", in nano-dollars (1 USD = 10^9)", "")
                                 .replace(", in nano-dollars", "")
                                 .replace("nano-dollars", "dollars"))
        return super().formfield_for_dbfield(db_field, request, **kwargs)

    def get_form(self, request, obj=None, **kwargs):
        if kwargs.get("fields"):
            kwargs["fields"] = [name for name in kwargs["fields"] if name != "change_reason"]
        form = super().get_form(request, obj, **kwargs)
        validate_table = getattr(self, "validate_table", None)

        class WithReason(form):
            change_reason = forms.CharField(
                label="Reason for this change", widget=forms.Textarea(attrs={"rows": 2}),
                max_length=1000, help_text="Kept in the audit log with your name.")

            def clean(self):
                cleaned = super().clean()
                if validate_table is not None and not self.errors:
                    validate_table(self.instance, cleaned)
                return cleaned

        return WithReason

    def save_model(self, request, obj, form, change):
        before = ({name: _json_value(form.initial.get(name)) for name in form.changed_data
                   if name != "change_reason"} if change else {})
        super().save_model(request, obj, form, change)
        names = form.changed_data if change else [f for f in form.fields if f != "change_reason"]
        after = {name: _json_value(getattr(obj, name, None)) for name in names
                 if name != "change_reason"}
        staff_table_edit_record(actor=request.user, table=obj._meta.verbose_name,
                                row=str(obj), reason=form.cleaned_data["change_reason"],
                                before=before, after=after)

    def has_delete_permission(self, request, obj=None):
        return False


def _rising(rows: list[tuple], what: str) -> None:
    """Each column after the first never falls as the first rises."""
    for lower, higher in pairwise(rows):
        for index in range(1, len(lower)):
            if higher[index] < lower[index]:
                raise forms.ValidationError(
                    f"{what} must rise together: no row may give less than the one below "
                    f"it.")


admin.site.unregister(SizeClass)


@admin.register(SizeClass)
class ConsoleSizeClassAdmin(AuditedTableAdmin, SizeClassAdmin):
    list_display = ["name", "max_params_b", "price_per_second", "price_per_hour",
                    "concurrency_weight"]

    @admin.display(description="per second", ordering="nanos_per_second")
    def price_per_second(self, obj):
        return usd(obj.nanos_per_second)

    @admin.display(description="per hour")
    def price_per_hour(self, obj):
        return usd(obj.nanos_per_second * 3600)

    def validate_table(self, instance, cleaned):
        if cleaned.get("nanos_per_second") is None or cleaned.get("max_params_b") is None:
            return
        rows = [(c.max_params_b, c.nanos_per_second, c.concurrency_weight)
                for c in SizeClass.objects.exclude(pk=instance.pk)]
        rows.append((cleaned["max_params_b"], cleaned["nanos_per_second"],
                     cleaned.get("concurrency_weight") or 0))
        _rising(sorted(rows), "Size, price per second and concurrency weight")


admin.site.unregister(InferenceModel)


@admin.register(InferenceModel)
class ConsoleInferenceModelAdmin(AuditedTableAdmin, InferenceModelAdmin):
    list_display = ["id", "kind", "params_b", "provider", "input_price", "output_price",
                    "updated_at"]

    @admin.display(description="input / Mtok")
    def input_price(self, obj):
        return usd(obj.input_nanos_per_mtok)

    @admin.display(description="output / Mtok")
    def output_price(self, obj):
        return usd(obj.output_nanos_per_mtok)

    def validate_table(self, instance, cleaned):
        kind = cleaned.get("kind")
        if kind == InferenceModel.Kind.OPEN and not cleaned.get("params_b"):
            raise forms.ValidationError({"params_b": "An open model needs its size."})
        if kind == InferenceModel.Kind.CLOSED:
            missing = {name: "A closed model needs its provider's price."
                       for name in ("input_nanos_per_mtok", "output_nanos_per_mtok")
                       if cleaned.get(name) is None}
            if missing:
                raise forms.ValidationError(missing)


admin.site.unregister(PricingPolicy)


@admin.register(PricingPolicy)
class ConsolePricingPolicyAdmin(AuditedTableAdmin, PricingPolicyAdmin):
    list_display = ["__str__", "platform_fee_ppm", "byok_fee"]

    @admin.display(description="BYOK fee")
    def byok_fee(self, obj):
        return usd(obj.byok_fee_nanos)


admin.site.unregister(Plan)


@admin.register(Plan)
class ConsolePlanAdmin(AuditedTableAdmin, PlanAdmin):
    list_display = ["code", "name", "monthly_price", "credit_grant",
                    "free_grant_interval_days", "closed_requests_per_second"]

    @admin.display(description="monthly price")
    def monthly_price(self, obj):
        return usd(obj.monthly_price_nanos)

    @admin.display(description="credit granted")
    def credit_grant(self, obj):
        return usd(obj.credit_grant_nanos)


admin.site.unregister(Tier)


@admin.register(Tier)
class ConsoleTierAdmin(AuditedTableAdmin, TierAdmin):
    list_display = ["name", "min_purchased", "max_params_b", "concurrency"]

    @admin.display(description="purchased in 4 weeks", ordering="min_purchased_nanos")
    def min_purchased(self, obj):
        return usd(obj.min_purchased_nanos)

    def validate_table(self, instance, cleaned):
        """The tiers start at $0 (every account has one) and each higher one unlocks at
        least as large a model and as many slots as the one below."""
        if None in (cleaned.get("min_purchased_nanos"), cleaned.get("max_params_b"),
                    cleaned.get("concurrency")):
            return
        rows = [(t.min_purchased_nanos, t.max_params_b, t.concurrency)
                for t in Tier.objects.exclude(pk=instance.pk)]
        rows.append((cleaned["min_purchased_nanos"], cleaned["max_params_b"],
                     cleaned["concurrency"]))
        rows.sort()
        if rows[0][0] != 0:
            raise forms.ValidationError({"min_purchased_nanos": "The lowest tier must start "
                                         "at $0, so every account has a tier."})
        if len({row[0] for row in rows}) != len(rows):
            raise forms.ValidationError({"min_purchased_nanos": "Another tier starts at this "
                                         "amount."})
        _rising(rows, "Purchased amount, model size and slots")
