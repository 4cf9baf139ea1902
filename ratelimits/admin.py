from django.contrib import admin
from django.utils import timezone

from config.admin_bases import ReadOnlyAdmin
from ratelimits.models import KeySpend, KeySpendNotice, Tier
from ratelimits.tiers import tiers_changed


@admin.register(Tier)
class TierAdmin(admin.ModelAdmin):
    list_display = ["name", "min_purchased_nanos", "max_params_b", "concurrency"]

    def save_model(self, request, obj, form, change):
        super().save_model(request, obj, form, change)
        tiers_changed(now=timezone.now())

    def delete_model(self, request, obj):
        super().delete_model(request, obj)
        tiers_changed(now=timezone.now())


@admin.register(KeySpend)
class KeySpendAdmin(ReadOnlyAdmin):
    """API keys' spend per period against their limits (written by the run path)."""

    list_display = ["api_key", "period_start", "spent_nanos"]
    search_fields = ["api_key__id", "api_key__name", "api_key__account__user__email"]
    list_select_related = ["api_key"]
    date_hierarchy = "period_start"


@admin.register(KeySpendNotice)
class KeySpendNoticeAdmin(ReadOnlyAdmin):
    list_display = ["api_key", "period_start", "percent", "spent_nanos", "limit_nanos",
                    "created_at", "sent_at"]
    list_filter = ["percent"]
    search_fields = ["api_key__id", "api_key__account__user__email"]
    list_select_related = ["api_key"]
