"""The audit log of staff actions.

A small model of our own rather than django-pghistory, django-simple-history or
django-auditlog: those record row changes, but a staff action is one decision (e.g. a
grant: a lot, a ledger transaction and a balance change) taken for a reason that must be
typed in, and the log must hold that reason, who acted and the account's money before and
after, in one row. Every console action writes its row through `console.services`, in
the same database transaction as the change itself. On PostgreSQL triggers refuse UPDATE
and DELETE (migration 0002), like the ledger's."""

from django.conf import settings
from django.db import models
from django.utils import timezone


class StaffAction(models.Model):
    class Kind(models.TextChoices):
        CREDIT_GRANT = "credit_grant", "Grant credit"
        CREDIT_ADJUST = "credit_adjust", "Adjust credit"
        PURCHASE_REFUND = "purchase_refund", "Refund purchase"
        ACCOUNT_SUSPEND = "account_suspend", "Suspend account"
        ACCOUNT_REINSTATE = "account_reinstate", "Reinstate account"
        HOLD_RELEASE = "hold_release", "Force-release hold"
        KEY_REVOKE = "key_revoke", "Revoke API key"
        AUTO_RELOAD_RESUME = "auto_reload_resume", "Resume auto-reload"
        STRIPE_EVENT_REPROCESS = "stripe_event_reprocess", "Reprocess Stripe event"
        TABLE_EDIT = "table_edit", "Edit price or tier table"

    id = models.BigAutoField(primary_key=True)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    actor = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT,
                              related_name="+")
    # Kept as written: the actor's address at the time, even if the user changes it later.
    actor_email = models.EmailField()
    kind = models.CharField(max_length=32, choices=Kind.choices)
    account = models.ForeignKey("accounts.Account", on_delete=models.PROTECT, null=True,
                                blank=True, related_name="+")
    target = models.CharField(max_length=255, blank=True,
                              help_text="What the action was taken on (a purchase, hold, key, "
                              "event or table row).")
    reason = models.TextField()
    before = models.JSONField(default=dict, blank=True)
    after = models.JSONField(default=dict, blank=True)
    summary = models.CharField(max_length=255, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["account", "created_at"], name="staff_action_account_idx")]
        permissions = [
            ("grant_credit", "Can grant credit up to the support limit"),
            ("grant_credit_unlimited", "Can grant credit beyond the support limit"),
            ("adjust_credit", "Can adjust credit up or down"),
            ("refund_purchase", "Can refund a purchase through Stripe"),
            ("suspend_account", "Can suspend and reinstate accounts"),
            ("release_hold", "Can force-release a hold"),
            ("revoke_key", "Can revoke an API key"),
            ("resume_auto_reload", "Can resume a paused auto-reload"),
            ("reprocess_stripe_event", "Can reprocess a Stripe event"),
        ]

    def __str__(self) -> str:
        when = f"{self.created_at:%Y-%m-%d %H:%M}"
        return f"{self.get_kind_display()} by {self.actor_email} at {when}"
