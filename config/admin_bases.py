from django.contrib import admin


class ReadOnlyAdmin(admin.ModelAdmin):
    """Money records (lots, ledger, payments, holds, usage) are written by services only;
    staff read them here."""

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False
