import uuid

from django.core.validators import MinValueValidator
from django.db import models
from django.utils import timezone


class Plan(models.Model):
    """A subscription plan. Staff may edit prices, grants and limits."""

    code = models.SlugField(max_length=16, unique=True)
    name = models.CharField(max_length=64)
    monthly_price_nanos = models.BigIntegerField(default=0, validators=[MinValueValidator(0)])
    credit_grant_nanos = models.BigIntegerField(
        default=0, validators=[MinValueValidator(0)],
        help_text="Credits granted each period (free plan) or with each paid month.")
    free_grant_interval_days = models.PositiveIntegerField(
        null=True, blank=True,
        help_text="Free plan: the free grant is refreshed this often. Empty: granted with "
        "each paid invoice instead.")
    closed_requests_per_second = models.PositiveIntegerField(
        null=True, blank=True,
        help_text="Closed-model requests per second per account. Empty: unlimited.")
    stripe_price_id = models.CharField(max_length=100, blank=True)

    class Meta:
        ordering = ["monthly_price_nanos"]

    def __str__(self) -> str:
        return self.name


class CreditLot(models.Model):
    """Credit from one purchase or grant, with its own expiry. Spending takes the
    soonest-expiring lot first; expired credit is never spendable."""

    class Source(models.TextChoices):
        PURCHASE = "purchase"
        FREE_GRANT = "free_grant"
        PLAN_GRANT = "plan_grant"
        AUTO_RELOAD = "auto_reload"
        AUTO_SCALE = "auto_scale"
        STAFF_GRANT = "staff_grant"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    # Lookups by account use the (account, grant_key) constraint's index: every settle
    # rewrites a lot's index entries, so the lot carries no more indexes than it needs.
    account = models.ForeignKey("accounts.Account", on_delete=models.PROTECT,
                                related_name="credit_lots", db_index=False)
    source = models.CharField(max_length=16, choices=Source.choices)
    amount_nanos = models.BigIntegerField()
    remaining_nanos = models.BigIntegerField()
    granted_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField()
    expired_at = models.DateTimeField(null=True, blank=True,
                                      help_text="When the expiry of what was left was recorded.")
    reason = models.CharField(max_length=255, blank=True)
    # Makes a grant idempotent: one free grant per cycle, one plan grant per invoice.
    grant_key = models.CharField(max_length=128, null=True, blank=True)  # noqa: DJ001 (NULL: no key, unique otherwise)

    class Meta:
        ordering = ["expires_at", "id"]
        constraints = [
            models.CheckConstraint(condition=models.Q(amount_nanos__gt=0),
                                   name="lot_amount_positive"),
            models.CheckConstraint(
                condition=models.Q(remaining_nanos__gte=0,
                                   remaining_nanos__lte=models.F("amount_nanos")),
                name="lot_remaining_within_amount"),
            models.UniqueConstraint(fields=["account", "grant_key"],
                                    name="lot_grant_key_unique"),
        ]
        indexes = [
            models.Index(fields=["account", "expires_at", "id"],
                         condition=models.Q(remaining_nanos__gt=0),
                         name="lot_spendable_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.get_source_display()} lot {self.id}"


class Purchase(models.Model):
    """Credit that was paid for. Purchases (less refunds) in the rolling window set the
    unlock tier; grants never do."""

    class Kind(models.TextChoices):
        STRIPE = "stripe", "Card payment"
        INVOICE = "invoice", "Paid outside Stripe"
        SUBSCRIPTION = "subscription", "Plan subscription"
        AUTO_RELOAD = "auto_reload", "Auto-reload"
        AUTO_SCALE = "auto_scale", "Auto-scale"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    account = models.ForeignKey("accounts.Account", on_delete=models.PROTECT,
                                related_name="purchases")
    kind = models.CharField(max_length=16, choices=Kind.choices)
    amount_nanos = models.BigIntegerField(validators=[MinValueValidator(1)])
    refunded_nanos = models.BigIntegerField(default=0)
    reference = models.CharField(max_length=255)
    lot = models.OneToOneField(CreditLot, on_delete=models.PROTECT, related_name="purchase")
    purchased_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-purchased_at"]
        constraints = [
            models.UniqueConstraint(fields=["account", "reference"],
                                    name="purchase_reference_unique"),
            models.CheckConstraint(condition=models.Q(amount_nanos__gt=0),
                                   name="purchase_amount_positive"),
            models.CheckConstraint(
                condition=models.Q(refunded_nanos__gte=0,
                                   refunded_nanos__lte=models.F("amount_nanos")),
                name="purchase_refund_within_amount"),
        ]
        indexes = [models.Index(fields=["account", "purchased_at"], name="purchase_window_idx")]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} {self.reference}"


class LedgerTransaction(models.Model):
    """One balanced movement of value. Append-only; see billing/ledger.py."""

    class Kind(models.TextChoices):
        PURCHASE = "purchase"
        GRANT = "grant"
        USAGE = "usage"
        EXPIRY = "expiry"
        REFUND = "refund"
        RECOVERY = "recovery", "Receivable recovered"
        ADJUSTMENT = "adjustment"

    account = models.ForeignKey("accounts.Account", on_delete=models.PROTECT, null=True,
                                related_name="ledger_transactions", db_index=False)
    kind = models.CharField(max_length=16, choices=Kind.choices)
    memo = models.CharField(max_length=255, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["id"]
        indexes = [models.Index(fields=["account", "id"], name="ledger_txn_account_idx")]

    def __str__(self) -> str:
        return f"#{self.id} {self.kind}"


class LedgerEntry(models.Model):
    """One leg of a ledger transaction: `amount_nanos` flowed into `book` (negative: out
    of it). The entries of a transaction sum to zero."""

    class Book(models.TextChoices):
        CUSTOMER_CREDIT = "customer_credit"
        CUSTOMER_RECEIVABLE = "customer_receivable"
        STRIPE_CASH = "stripe_cash"
        EXTERNAL_CASH = "external_cash", "Cash received outside Stripe"
        PROMOTIONAL = "promotional", "Promotional grants"
        OPEN_REVENUE = "open_revenue", "Open-model revenue"
        PROVIDER_PASSTHROUGH = "provider_passthrough"
        PLATFORM_FEE = "platform_fee"
        BYOK_FEE = "byok_fee"
        EXPIRED_CREDIT = "expired_credit"
        REFUND_SHORTFALL = "refund_shortfall", "Refunded after the credit was spent"
        STAFF_ADJUSTMENT = "staff_adjustment"

    transaction = models.ForeignKey(LedgerTransaction, on_delete=models.PROTECT,
                                    related_name="entries")
    book = models.CharField(max_length=24, choices=Book.choices)
    # Indexed by (account, book) below; lots are looked up through their account.
    account = models.ForeignKey("accounts.Account", on_delete=models.PROTECT, null=True,
                                related_name="+", db_index=False)
    lot = models.ForeignKey(CreditLot, on_delete=models.PROTECT, null=True, related_name="+",
                            db_index=False)
    amount_nanos = models.BigIntegerField()

    class Meta:
        ordering = ["id"]
        verbose_name_plural = "ledger entries"
        constraints = [
            # Customer books always name their account, and credit names its lot.
            models.CheckConstraint(
                name="ledger_entry_customer_book_has_account",
                condition=~models.Q(book__in=["customer_credit", "customer_receivable"])
                | models.Q(account__isnull=False),
            ),
            models.CheckConstraint(
                name="ledger_entry_credit_has_lot",
                condition=~models.Q(book="customer_credit") | models.Q(lot__isnull=False),
            ),
        ]
        indexes = [models.Index(fields=["account", "book"], name="ledger_entry_book_idx")]

    def __str__(self) -> str:
        return f"{self.book} {self.amount_nanos:+d}"


class LowBalanceEvent(models.Model):
    """The balance crossed below the auto-reload threshold: written in the same
    transaction as the charge or expiry that crossed it, acted on by auto-reload."""

    account = models.ForeignKey("accounts.Account", on_delete=models.PROTECT,
                                related_name="low_balance_events")
    threshold_nanos = models.BigIntegerField()
    balance_before_nanos = models.BigIntegerField()
    balance_after_nanos = models.BigIntegerField()
    created_at = models.DateTimeField(default=timezone.now)
    handled_at = models.DateTimeField(null=True, blank=True)
    outcome = models.CharField(max_length=255, blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["account", "created_at"], name="low_balance_account_idx")]

    def __str__(self) -> str:
        return f"Low balance {self.account_id} at {self.created_at:%Y-%m-%d %H:%M}"
