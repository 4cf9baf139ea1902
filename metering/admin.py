from django.contrib import admin

from config.admin_bases import ReadOnlyAdmin
from metering.catalog import catalog_caches_clear
from metering.models import Hold, InferenceModel, PricingPolicy, SizeClass, UsageRecord


class CatalogAdmin(admin.ModelAdmin):
    """The run path caches the catalog for a few seconds per process: an edit here
    reaches this process at once and the others within metering.catalog's TTL."""

    def save_model(self, request, obj, form, change):
        super().save_model(request, obj, form, change)
        catalog_caches_clear()

    def delete_model(self, request, obj):
        super().delete_model(request, obj)
        catalog_caches_clear()


@admin.register(SizeClass)
class SizeClassAdmin(CatalogAdmin):
    list_display = ["name", "max_params_b", "nanos_per_second", "concurrency_weight"]


@admin.register(InferenceModel)
class InferenceModelAdmin(CatalogAdmin):
    list_display = ["id", "kind", "params_b", "provider", "input_nanos_per_mtok",
                    "output_nanos_per_mtok", "nanos_per_image", "nanos_per_second",
                    "nanos_per_request", "updated_at"]
    list_filter = ["kind", "provider"]
    search_fields = ["id"]


@admin.register(PricingPolicy)
class PricingPolicyAdmin(CatalogAdmin):
    list_display = ["__str__", "platform_fee_ppm", "byok_fee_nanos"]

    def has_add_permission(self, request):
        return not PricingPolicy.objects.exists()

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(Hold)
class HoldAdmin(ReadOnlyAdmin):
    list_display = ["id", "account", "model_id", "status", "reserved_nanos", "weight",
                    "created_at", "lease_expires_at", "charged_nanos"]
    list_filter = ["status", "kind", "byok"]
    search_fields = ["id", "request_id", "account__user__email"]
    list_select_related = ["account__user"]
    date_hierarchy = "created_at"


@admin.register(UsageRecord)
class UsageRecordAdmin(ReadOnlyAdmin):
    list_display = ["hold_id", "account", "model_id", "billed_seconds", "input_tokens",
                    "output_tokens", "unit", "units", "charged_nanos", "unpaid_nanos",
                    "created_at"]
    list_filter = ["kind", "byok"]
    search_fields = ["hold__id", "account__user__email", "model__id"]
    list_select_related = ["account__user"]
    date_hierarchy = "created_at"
