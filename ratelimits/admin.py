from django.contrib import admin
from django.utils import timezone

from ratelimits.models import Tier
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
