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
    # Lookups by account use the (account, expires_at) index below.
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
            # No index mentions remaining_nanos, not even in a condition: a settle then
            # rewrites the lot in place (a HOT update) instead of adding index entries.
            models.Index(fields=["account", "expires_at", "id"], name="lot_account_expiry_idx"),
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

    # Accounts are never deleted, and every settle writes here while it holds the account
    # row's lock: no foreign-key constraint, which would look the hot row up and
    # share-lock it once more per insert.
    account = models.ForeignKey("accounts.Account", on_delete=models.PROTECT, null=True,
                                related_name="ledger_transactions", db_index=False,
                                db_constraint=False)
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
    # Indexed by (account, book) below; lots are looked up through their account. Not a
    # foreign-key constraint, as on the transaction (above).
    account = models.ForeignKey("accounts.Account", on_delete=models.PROTECT, null=True,
                                related_name="+", db_index=False, db_constraint=False)
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


class LedgerCheckpoint(models.Model):
    """How far `ledger_check` has verified the ledger (one row): every transaction and entry
    up to these ids balanced, and the customer books' sums up to them are in
    LedgerCheckpointSum. The next check reads only what was posted after, and compares
    checkpoint + new with the lots and balances (billing/ledger_check.py)."""

    through_transaction_id = models.BigIntegerField()
    through_entry_id = models.BigIntegerField()
    # The last LedgerRewrite the check had seen: a later one sends it back to the start.
    rewrites_seen = models.BigIntegerField(default=0)
    checked_at = models.DateTimeField()
    full_checked_at = models.DateTimeField()

    class Meta:
        constraints = [models.CheckConstraint(condition=models.Q(id=1),
                                              name="ledger_checkpoint_single_row")]

    def __str__(self) -> str:
        return f"ledger checked through transaction {self.through_transaction_id}"


class LedgerCheckpointSum(models.Model):
    """A customer book's sum up to the checkpoint, per account and lot (credit has one row
    per lot, the receivable one per account with no lot)."""

    account = models.ForeignKey("accounts.Account", on_delete=models.PROTECT, related_name="+",
                                db_index=False)
    book = models.CharField(max_length=24, choices=LedgerEntry.Book.choices)
    lot = models.ForeignKey(CreditLot, on_delete=models.PROTECT, null=True, related_name="+",
                            db_index=False)
    total_nanos = models.BigIntegerField()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["account", "book", "lot"],
                                               nulls_distinct=False,
                                               name="ledger_checkpoint_sum_unique")]

    def __str__(self) -> str:
        return f"{self.book} of {self.account_id} (lot {self.lot_id}): {self.total_nanos}"


class LedgerRewrite(models.Model):
    """An UPDATE or DELETE that reached a ledger table: the append-only triggers refuse
    them, so one only happens with triggers switched off (session_replication_role =
    replica, a restore, a repair). Recorded by a trigger that fires even then; the next
    `ledger_check` verifies the whole ledger again instead of only what is new."""

    table_name = models.CharField(max_length=64)
    operation = models.CharField(max_length=16)
    role = models.CharField(max_length=64)
    at = models.DateTimeField()

    def __str__(self) -> str:
        return f"{self.operation} on {self.table_name} at {self.at}"


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


# --- Payments (Stripe) ------------------------------------------------------------------

USD_NANOS = 10**9


class BillingProfile(models.Model):
    """An account's payment set-up: its Stripe customer, its default card and its
    auto-reload and auto-scale settings.

    The row is also the lock that serialises an account's payment decisions (one reload
    in flight, one auto-scale purchase per burst, the monthly maximums). It is always
    locked before the account row, never after (see accounts/locks.py)."""

    account = models.OneToOneField("accounts.Account", on_delete=models.PROTECT,
                                   primary_key=True, related_name="billing_profile")
    # NULL until the first payment needs it; unique, so one customer per account.
    stripe_customer_id = models.CharField(max_length=255, unique=True, null=True,
                                          blank=True)
    default_card = models.ForeignKey("Card", on_delete=models.SET_NULL, null=True,
                                     blank=True, related_name="+")

    auto_reload_enabled = models.BooleanField(default=False)
    auto_reload_threshold_nanos = models.BigIntegerField(
        default=3 * USD_NANOS, validators=[MinValueValidator(0)])
    auto_reload_amount_nanos = models.BigIntegerField(
        default=10 * USD_NANOS, validators=[MinValueValidator(1)])
    auto_reload_monthly_max_nanos = models.BigIntegerField(
        default=100 * USD_NANOS, validators=[MinValueValidator(0)],
        help_text="Most auto-reload may charge in one UTC calendar month.")
    auto_reload_card = models.ForeignKey(
        "Card", on_delete=models.SET_NULL, null=True, blank=True, related_name="+",
        help_text="The card auto-reload charges. Empty: the default card.")
    auto_reload_paused_at = models.DateTimeField(null=True, blank=True)
    auto_reload_paused_reason = models.CharField(max_length=255, blank=True)

    # Auto-scale spends nothing until the customer sets a maximum.
    auto_scale_max_monthly_nanos = models.BigIntegerField(
        default=0, validators=[MinValueValidator(0)],
        help_text="Most auto-scale may charge in one UTC calendar month (0: never).")

    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=models.Q(auto_reload_threshold_nanos__gte=0,
                                   auto_reload_amount_nanos__gt=0,
                                   auto_reload_monthly_max_nanos__gte=0,
                                   auto_scale_max_monthly_nanos__gte=0),
                name="billing_profile_amounts_valid"),
        ]

    def __str__(self) -> str:
        return f"Billing profile of {self.account_id}"

    @property
    def auto_reload_active(self) -> bool:
        return self.auto_reload_enabled and self.auto_reload_paused_at is None


class Card(models.Model):
    """A card saved on the account's Stripe customer (a Stripe PaymentMethod). Removing
    a card keeps the row, so a late notice about it cannot bring it back."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    account = models.ForeignKey("accounts.Account", on_delete=models.PROTECT,
                                related_name="cards")
    stripe_payment_method_id = models.CharField(max_length=255, unique=True)
    brand = models.CharField(max_length=32, blank=True)
    last4 = models.CharField(max_length=4, blank=True)
    exp_month = models.PositiveSmallIntegerField(null=True, blank=True)
    exp_year = models.PositiveSmallIntegerField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    removed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["created_at", "id"]
        indexes = [models.Index(fields=["account", "created_at"], name="card_account_idx")]

    def __str__(self) -> str:
        return f"{self.brand or 'card'} •••• {self.last4}"


class Payment(models.Model):
    """One attempt to take money through Stripe (a PaymentIntent), from the decision to
    charge to its outcome. A succeeded payment has exactly one Purchase."""

    class Purpose(models.TextChoices):
        PURCHASE = "purchase", "Credit purchase"
        AUTO_RELOAD = "auto_reload", "Auto-reload"
        AUTO_SCALE = "auto_scale", "Auto-scale"
        SUBSCRIPTION = "subscription", "Plan invoice"

    class Status(models.TextChoices):
        PENDING = "pending"  # decided; Stripe's answer not known yet
        REQUIRES_ACTION = "requires_action"  # the customer must authenticate or pay
        PROCESSING = "processing"
        SUCCEEDED = "succeeded"
        FAILED = "failed"
        CANCELED = "canceled"

    IN_FLIGHT = (Status.PENDING, Status.PROCESSING)
    TERMINAL = (Status.SUCCEEDED, Status.FAILED, Status.CANCELED)

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    account = models.ForeignKey("accounts.Account", on_delete=models.PROTECT,
                                related_name="payments")
    purpose = models.CharField(max_length=16, choices=Purpose.choices)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    amount_nanos = models.BigIntegerField()
    # Sent to Stripe with the charge: the same decision never charges twice.
    idempotency_key = models.CharField(max_length=255, unique=True)
    stripe_payment_intent_id = models.CharField(max_length=255, unique=True, null=True,
                                                blank=True)
    stripe_checkout_session_id = models.CharField(max_length=255, unique=True, null=True,
                                                  blank=True)
    stripe_charge_id = models.CharField(max_length=255, blank=True)
    receipt_url = models.URLField(max_length=500, blank=True)
    card = models.ForeignKey(Card, on_delete=models.SET_NULL, null=True, blank=True,
                             related_name="payments")
    # Auto-reload: the crossing this reload answers (one reload per crossing).
    low_balance_event = models.OneToOneField(LowBalanceEvent, on_delete=models.PROTECT,
                                             null=True, blank=True, related_name="payment")
    purchase = models.OneToOneField(Purchase, on_delete=models.PROTECT, null=True,
                                    blank=True, related_name="payment")
    failure_code = models.CharField(max_length=64, blank=True)
    failure_message = models.CharField(max_length=255, blank=True)
    # While a worker is charging: no one else starts this charge before then.
    claimed_until = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(amount_nanos__gt=0)
                & models.Q(amount_nanos=models.F("amount_nanos") / 10**7 * 10**7),
                name="payment_amount_whole_cents"),
            # At most one reload, and one auto-scale purchase, in flight per account.
            models.UniqueConstraint(
                fields=["account"], condition=models.Q(purpose="auto_reload",
                                                       status__in=["pending", "processing"]),
                name="payment_one_reload_in_flight"),
            models.UniqueConstraint(
                fields=["account"], condition=models.Q(purpose="auto_scale",
                                                       status__in=["pending", "processing"]),
                name="payment_one_auto_scale_in_flight"),
        ]
        indexes = [
            models.Index(fields=["account", "purpose", "created_at"],
                         name="payment_account_purpose_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.get_purpose_display()} {self.id} ({self.status})"


class StripeEvent(models.Model):
    """A webhook event, stored by its Stripe id before anything else is done with it,
    then processed once."""

    stripe_id = models.CharField(max_length=255, unique=True)
    type = models.CharField(max_length=100)
    payload = models.JSONField()
    created_at = models.DateTimeField(help_text="When Stripe created the event.")
    received_at = models.DateTimeField(default=timezone.now)
    processed_at = models.DateTimeField(null=True, blank=True)
    outcome = models.CharField(max_length=255, blank=True)
    attempts = models.PositiveIntegerField(default=0)
    last_error = models.TextField(blank=True)

    class Meta:
        ordering = ["-received_at"]
        indexes = [models.Index(fields=["type", "received_at"], name="stripe_event_type_idx")]

    def __str__(self) -> str:
        return f"{self.type} {self.stripe_id}"


class Subscription(models.Model):
    """A plan subscription on Stripe. The account is on the plan while it is live."""

    LIVE_STATUSES = ("active", "trialing", "past_due")
    FINAL_STATUSES = ("canceled", "incomplete_expired")

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    account = models.ForeignKey("accounts.Account", on_delete=models.PROTECT,
                                related_name="subscriptions")
    plan = models.ForeignKey(Plan, on_delete=models.PROTECT, to_field="code",
                             related_name="subscriptions")
    stripe_subscription_id = models.CharField(max_length=255, unique=True)
    status = models.CharField(max_length=32)
    # Stripe's time for the state stored here: older news is not applied over it.
    status_at = models.DateTimeField()
    cancel_at_period_end = models.BooleanField(default=False)
    current_period_end = models.DateTimeField(null=True, blank=True)
    last_invoice_failure = models.CharField(max_length=255, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    ended_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["account", "status"], name="subscription_account_idx")]

    def __str__(self) -> str:
        return f"{self.plan_id} {self.stripe_subscription_id} ({self.status})"

    @property
    def is_live(self) -> bool:
        return self.status in self.LIVE_STATUSES


class Reversal(models.Model):
    """Money paid back on a purchase: a refund, or a dispute lost. Applied once per Stripe
    refund or dispute id, whoever reports it first."""

    class Kind(models.TextChoices):
        REFUND = "refund"
        DISPUTE = "dispute", "Dispute lost"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    account = models.ForeignKey("accounts.Account", on_delete=models.PROTECT,
                                related_name="reversals")
    purchase = models.ForeignKey(Purchase, on_delete=models.PROTECT, related_name="reversals")
    kind = models.CharField(max_length=16, choices=Kind.choices)
    stripe_id = models.CharField(max_length=255, unique=True)
    amount_nanos = models.BigIntegerField(help_text="Money paid back.")
    clawed_nanos = models.BigIntegerField(help_text="Unspent credit taken back.")
    reason = models.CharField(max_length=255, blank=True)
    ledger_transaction = models.ForeignKey(LedgerTransaction, on_delete=models.PROTECT,
                                           null=True, blank=True, related_name="+")
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(amount_nanos__gte=0, clawed_nanos__gte=0,
                                   clawed_nanos__lte=models.F("amount_nanos")),
                name="reversal_amounts_valid"),
        ]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} {self.stripe_id}"


class Dispute(models.Model):
    """A card dispute (chargeback). Opening one suspends the account until staff act."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    account = models.ForeignKey("accounts.Account", on_delete=models.PROTECT,
                                related_name="disputes")
    purchase = models.ForeignKey(Purchase, on_delete=models.PROTECT, null=True, blank=True,
                                 related_name="disputes")
    stripe_dispute_id = models.CharField(max_length=255, unique=True)
    stripe_charge_id = models.CharField(max_length=255, blank=True)
    amount_nanos = models.BigIntegerField()
    status = models.CharField(max_length=32)
    reason = models.CharField(max_length=64, blank=True)
    status_at = models.DateTimeField()
    suspended_at = models.DateTimeField(null=True, blank=True)
    closed_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"Dispute {self.stripe_dispute_id} ({self.status})"
