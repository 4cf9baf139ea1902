from django.contrib import admin

from billing.models import CreditLot, LedgerEntry, LedgerTransaction, Plan, Purchase
from metering.admin import CatalogAdmin


@admin.register(Plan)
class PlanAdmin(CatalogAdmin):
    list_display = ["code", "name", "monthly_price_nanos", "credit_grant_nanos",
                    "free_grant_interval_days", "closed_requests_per_second"]

    def get_readonly_fields(self, request, obj=None):
        return ["code"] if obj else []

    def has_delete_permission(self, request, obj=None):
        return False


class ReadOnlyAdmin(admin.ModelAdmin):
    """Money records are written by services only; staff read them here."""

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(CreditLot)
class CreditLotAdmin(ReadOnlyAdmin):
    list_display = ["id", "account", "source", "amount_nanos", "remaining_nanos",
                    "granted_at", "expires_at"]
    list_filter = ["source"]
    search_fields = ["account__user__email", "account__id"]
    list_select_related = ["account__user"]


@admin.register(Purchase)
class PurchaseAdmin(ReadOnlyAdmin):
    list_display = ["id", "account", "kind", "amount_nanos", "refunded_nanos", "reference",
                    "purchased_at"]
    list_filter = ["kind"]
    search_fields = ["account__user__email", "reference"]
    list_select_related = ["account__user"]


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
