from django.contrib import admin
from django.contrib.auth.admin import UserAdmin as BaseUserAdmin

from accounts.models import Account, ApiKey, User
from config.money import nanos_to_usd


@admin.register(User)
class UserAdmin(BaseUserAdmin):
    ordering = ["email"]
    list_display = ["email", "is_staff", "is_active", "date_joined"]
    search_fields = ["email"]
    fieldsets = [
        (None, {"fields": ["email", "password"]}),
        ("Permissions", {"fields": ["is_active", "is_staff", "is_superuser", "groups",
                                    "user_permissions"]}),
        ("Dates", {"fields": ["last_login", "date_joined"]}),
    ]
    add_fieldsets = [(None, {"classes": ["wide"],
                             "fields": ["email", "password1", "password2"]})]


class ApiKeyInline(admin.TabularInline):
    model = ApiKey
    fields = ["name", "kind", "prefix", "created_at", "last_used_at", "expires_at", "revoked_at"]
    readonly_fields = fields
    extra = 0
    can_delete = False
    show_change_link = False

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(Account)
class AccountAdmin(admin.ModelAdmin):
    list_display = ["email", "plan", "status", "balance_usd", "tier", "created_at"]
    list_filter = ["status", "plan"]
    search_fields = ["user__email", "id"]
    list_select_related = ["user", "tier"]
    readonly_fields = ["id", "user", "created_at", "balance_nanos", "held_nanos",
                       "slots_in_use", "credit_valid_until", "receivable_nanos", "tier",
                       "tier_max_params_b", "tier_concurrency", "purchased_window_nanos",
                       "tier_valid_until", "plan", "status", "status_reason"]
    inlines = [ApiKeyInline]

    def has_add_permission(self, request):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    @admin.display(description="email", ordering="user__email")
    def email(self, obj):
        return obj.user.email

    @admin.display(description="balance")
    def balance_usd(self, obj):
        return f"${nanos_to_usd(obj.balance_nanos)}"
