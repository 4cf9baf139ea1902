from django.contrib import admin

from notifications.models import EmailNotice


@admin.register(EmailNotice)
class EmailNoticeAdmin(admin.ModelAdmin):
    """What the customers were told, and when (read-only: the record of sent mail)."""

    list_display = ["sent_at", "kind", "recipient", "subject"]
    list_filter = ["kind"]
    search_fields = ["recipient", "subject_key", "account__id"]
    date_hierarchy = "sent_at"
    readonly_fields = ["kind", "subject_key", "account", "recipient", "subject", "sent_at"]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False
