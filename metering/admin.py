from django.contrib import admin

from metering.models import InferenceModel, PricingPolicy, SizeClass


@admin.register(SizeClass)
class SizeClassAdmin(admin.ModelAdmin):
    list_display = ["name", "max_params_b", "nanos_per_second", "concurrency_weight"]


@admin.register(InferenceModel)
class InferenceModelAdmin(admin.ModelAdmin):
    list_display = ["id", "kind", "params_b", "provider", "input_nanos_per_mtok",
                    "output_nanos_per_mtok", "updated_at"]
    list_filter = ["kind", "provider"]
    search_fields = ["id"]


@admin.register(PricingPolicy)
class PricingPolicyAdmin(admin.ModelAdmin):
    list_display = ["__str__", "platform_fee_ppm", "byok_fee_nanos"]

    def has_add_permission(self, request):
        return not PricingPolicy.objects.exists()

    def has_delete_permission(self, request, obj=None):
        return False
