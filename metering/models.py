from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.utils import timezone


class SizeClass(models.Model):
    """A price band for open models: a model takes the smallest class at least its size."""

    name = models.CharField(max_length=16, unique=True)
    max_params_b = models.DecimalField(max_digits=10, decimal_places=3, unique=True,
                                       help_text="Largest model size, in billions of "
                                       "parameters, in this class.")
    nanos_per_second = models.BigIntegerField(validators=[MinValueValidator(0)],
                                              help_text="Price per billed second, in "
                                              "nano-dollars (1 USD = 10^9).")
    concurrency_weight = models.PositiveIntegerField(default=1, validators=[
        MinValueValidator(1)])

    class Meta:
        ordering = ["max_params_b"]
        verbose_name_plural = "size classes"

    def __str__(self) -> str:
        return self.name


class InferenceModel(models.Model):
    """A model the gateway can run. Open models are priced by size class; closed ones
    at the provider's price plus the platform fee."""

    class Kind(models.TextChoices):
        OPEN = "open"
        CLOSED = "closed"

    id = models.CharField(primary_key=True, max_length=200,
                          help_text='The gateway\'s model id, e.g. "meta-llama/Llama-3-70b".')
    kind = models.CharField(max_length=8, choices=Kind.choices)
    params_b = models.DecimalField(max_digits=10, decimal_places=3, null=True, blank=True,
                                   help_text="Open models: size in billions of parameters.")
    provider = models.CharField(max_length=50, blank=True,
                                help_text="Closed models: openai, anthropic, google, ...")
    input_nanos_per_mtok = models.BigIntegerField(null=True, blank=True,
                                                  help_text="Closed models: nano-dollars "
                                                  "per million input tokens.")
    output_nanos_per_mtok = models.BigIntegerField(null=True, blank=True,
                                                   help_text="Closed models: nano-dollars "
                                                   "per million output tokens.")
    # Closed models priced per unit (any of them, besides or instead of tokens).
    nanos_per_image = models.BigIntegerField(null=True, blank=True,
                                             help_text="Closed models: nano-dollars per "
                                             "image.")
    nanos_per_second = models.BigIntegerField(null=True, blank=True,
                                              help_text="Closed models: nano-dollars per "
                                              "second (video, audio, compute).")
    nanos_per_request = models.BigIntegerField(null=True, blank=True,
                                               help_text="Closed models: nano-dollars per "
                                               "request.")
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["id"]
        constraints = [
            models.CheckConstraint(
                name="model_open_has_size",
                condition=(models.Q(kind="open", params_b__gt=0) | models.Q(kind="closed")),
            ),
            models.CheckConstraint(
                name="model_closed_has_a_price",
                condition=(
                    models.Q(kind="open")
                    | models.Q(kind="closed", input_nanos_per_mtok__gte=0,
                               output_nanos_per_mtok__gte=0)
                    | models.Q(kind="closed", input_nanos_per_mtok__isnull=True,
                               output_nanos_per_mtok__isnull=True)
                    & (models.Q(nanos_per_image__gte=0) | models.Q(nanos_per_second__gte=0)
                       | models.Q(nanos_per_request__gte=0))
                ),
            ),
            models.CheckConstraint(
                name="model_unit_prices_non_negative",
                condition=(models.Q(nanos_per_image__isnull=True)
                           | models.Q(nanos_per_image__gte=0))
                & (models.Q(nanos_per_second__isnull=True) | models.Q(nanos_per_second__gte=0))
                & (models.Q(nanos_per_request__isnull=True)
                   | models.Q(nanos_per_request__gte=0)),
            ),
        ]

    def __str__(self) -> str:
        return self.id


class PricingPolicy(models.Model):
    """Platform-wide price rules that staff may edit: one row."""

    platform_fee_ppm = models.PositiveIntegerField(
        default=20_000, validators=[MaxValueValidator(1_000_000)],
        help_text="Fee on closed-model provider cost, in parts per million (2% = 20000).")
    byok_fee_nanos = models.BigIntegerField(
        default=0, validators=[MinValueValidator(0)],
        help_text="Charge to credits for a bring-your-own-key run, in nano-dollars.")
    default_estimate_seconds = models.PositiveIntegerField(
        default=60, help_text="Open models: seconds reserved when the gateway sends no "
        "estimate.")
    default_estimate_input_tokens = models.PositiveIntegerField(default=1_000)
    default_estimate_output_tokens = models.PositiveIntegerField(default=1_000)
    default_estimate_images = models.PositiveIntegerField(
        default=1, help_text="Closed models priced per image: images reserved when the "
        "gateway sends no estimate.")
    default_estimate_requests = models.PositiveIntegerField(
        default=1, help_text="Closed models priced per request: requests reserved when "
        "the gateway sends no estimate. (Per second: the seconds above.)")
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        verbose_name = verbose_name_plural = "pricing policy"
        constraints = [models.CheckConstraint(condition=models.Q(id=1),
                                              name="pricing_policy_single_row")]

    def __str__(self) -> str:
        return "Pricing policy"


class Hold(models.Model):
    """A reservation for one run: TigerBeetle's pending transfer. It holds money and
    concurrency slots until it is settled (posted, for the actual usage), released
    (voided) or its lease runs out (voided by expiry). Prices are fixed when the run is
    authorized and kept here."""

    class Status(models.TextChoices):
        OPEN = "open"
        SETTLED = "settled"
        RELEASED = "released"
        EXPIRED = "expired"

    # Every authorize inserts a hold: it carries only the indexes its reads need (the
    # account's are served by the (account, request_id) constraint). Accounts, keys and
    # models are never deleted, so their references are not foreign-key constraints: a
    # constraint would take a share lock on the same hot account, key and model rows
    # from every concurrent run (the hold's account is the row its insert's own
    # statement has just updated).
    id = models.UUIDField(primary_key=True, editable=False)
    account = models.ForeignKey("accounts.Account", on_delete=models.PROTECT,
                                related_name="holds", db_index=False, db_constraint=False)
    api_key = models.ForeignKey("accounts.ApiKey", on_delete=models.PROTECT,
                                related_name="holds", db_index=False, db_constraint=False)
    model = models.ForeignKey(InferenceModel, on_delete=models.PROTECT, related_name="holds",
                              db_index=False, db_constraint=False)
    request_id = models.CharField(max_length=200)
    kind = models.CharField(max_length=8, choices=InferenceModel.Kind.choices)
    byok = models.BooleanField(default=False)
    status = models.CharField(max_length=8, choices=Status.choices, default=Status.OPEN)
    reserved_nanos = models.BigIntegerField()
    weight = models.IntegerField(help_text="Concurrency slots the run takes.")
    # Price snapshot. Closed models: a unit with no price is NULL (settling by it is
    # refused); nanos_per_second is the size class's rate for open models and the
    # model's price per second for closed ones.
    nanos_per_second = models.BigIntegerField(default=0, null=True)
    input_nanos_per_mtok = models.BigIntegerField(default=0, null=True)
    output_nanos_per_mtok = models.BigIntegerField(default=0, null=True)
    nanos_per_image = models.BigIntegerField(null=True, blank=True)
    nanos_per_request = models.BigIntegerField(null=True, blank=True)
    # The start of the key's spend-limit period the run counts in (NULL: the key had no
    # limit when the run was authorized; ratelimits/key_limits.py).
    spend_period_start = models.DateTimeField(null=True, blank=True)
    platform_fee_ppm = models.IntegerField(default=0)
    byok_fee_nanos = models.BigIntegerField(default=0)

    created_at = models.DateTimeField()
    lease_expires_at = models.DateTimeField()
    closed_at = models.DateTimeField(null=True, blank=True)
    # What the settle answered, answered again unchanged when the hold is settled again.
    charged_nanos = models.BigIntegerField(null=True, blank=True)
    billed_seconds = models.BigIntegerField(null=True, blank=True)
    unpaid_nanos = models.BigIntegerField(null=True, blank=True)
    balance_after_nanos = models.BigIntegerField(null=True, blank=True)
    available_after_nanos = models.BigIntegerField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["account", "request_id"],
                                    name="hold_request_id_unique"),
            models.CheckConstraint(condition=models.Q(reserved_nanos__gte=0),
                                   name="hold_reserved_non_negative"),
            models.CheckConstraint(condition=models.Q(weight__gte=0),
                                   name="hold_weight_non_negative"),
        ]
        indexes = [
            models.Index(fields=["lease_expires_at"], condition=models.Q(status="open"),
                         name="hold_open_sweep_idx"),
            # ledger_check's key spend check reads only the holds that count against a
            # spend limit (a key without one adds nothing to this index).
            models.Index(fields=["api_key", "spend_period_start"],
                         condition=models.Q(spend_period_start__isnull=False),
                         name="hold_key_spend_idx"),
        ]

    def __str__(self) -> str:
        return f"hold {self.id} ({self.status})"


class UsageRecord(models.Model):
    """What one settled run used and was charged; the dashboard's usage comes from here."""

    # Written by every settle: indexes and constraints as lean as on Hold (the settle
    # takes the hold and the account from the rows it has just locked and updated).
    hold = models.OneToOneField(Hold, on_delete=models.PROTECT, related_name="usage",
                                db_constraint=False)
    account = models.ForeignKey("accounts.Account", on_delete=models.PROTECT,
                                related_name="usage_records", db_index=False,
                                db_constraint=False)
    api_key = models.ForeignKey("accounts.ApiKey", on_delete=models.PROTECT, related_name="+",
                                db_index=False, db_constraint=False)
    model = models.ForeignKey(InferenceModel, on_delete=models.PROTECT, related_name="+",
                              db_index=False, db_constraint=False)
    kind = models.CharField(max_length=8, choices=InferenceModel.Kind.choices)
    byok = models.BooleanField(default=False)
    inference_seconds = models.DecimalField(max_digits=14, decimal_places=3, null=True)
    load_seconds = models.DecimalField(max_digits=14, decimal_places=3, null=True)
    billed_seconds = models.BigIntegerField(null=True)
    input_tokens = models.BigIntegerField(null=True)
    output_tokens = models.BigIntegerField(null=True)
    provider_cost_nanos = models.BigIntegerField(null=True)
    # Closed models priced per unit: which unit the run was settled by, and how many.
    unit = models.CharField(max_length=8, blank=True, default="")
    units = models.DecimalField(max_digits=24, decimal_places=9, null=True)
    charged_nanos = models.BigIntegerField()
    # Part of the charge the credit could not cover (owed, recovered from new credit).
    unpaid_nanos = models.BigIntegerField(default=0)
    created_at = models.DateTimeField()

    class Meta:
        indexes = [models.Index(fields=["account", "created_at"], name="usage_account_time_idx")]

    def __str__(self) -> str:
        return f"usage {self.hold_id}"
