from django.db import models
from django.utils import timezone


class EmailNotice(models.Model):
    """An email that went to a customer about one thing (a purchase, a crossing, a lot).

    The unique (kind, subject_key) pair is what makes each email go out once: the row is
    written in the transaction that sends the email, so a second sender, however close in
    time, waits on the first one's row and then finds it (never check-then-insert)."""

    class Kind(models.TextChoices):
        WELCOME = "welcome"
        PURCHASE_RECEIPT = "purchase_receipt", "Purchase receipt"
        LOW_BALANCE = "low_balance", "Low balance"
        AUTO_RELOAD_FAILED = "auto_reload_failed", "Auto-reload failed"
        CREDIT_EXPIRING = "credit_expiring", "Credit expiring"

    kind = models.CharField(max_length=32, choices=Kind.choices)
    # What the email is about: an account, purchase, low-balance event or credit lot id.
    subject_key = models.CharField(max_length=128)
    account = models.ForeignKey("accounts.Account", on_delete=models.PROTECT,
                                related_name="email_notices")
    recipient = models.EmailField()
    subject = models.CharField(max_length=255)
    sent_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-sent_at"]
        constraints = [
            models.UniqueConstraint(fields=["kind", "subject_key"],
                                    name="email_notice_once_per_subject"),
        ]
        indexes = [models.Index(fields=["account", "sent_at"], name="email_notice_account_idx")]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} to {self.recipient}"
