from django.core.validators import MinValueValidator
from django.db import models


class Tier(models.Model):
    """An unlock tier: credits purchased in the rolling window unlock model sizes and
    concurrent-run slots."""

    name = models.CharField(max_length=32, unique=True)
    min_purchased_nanos = models.BigIntegerField(
        unique=True, validators=[MinValueValidator(0)],
        help_text="Credits purchased in the last 4 weeks, in nano-dollars, that reach it.")
    max_params_b = models.DecimalField(max_digits=10, decimal_places=3,
                                       help_text="Largest open model unlocked, in billions "
                                       "of parameters.")
    concurrency = models.PositiveIntegerField(help_text="Concurrent-run slots.")

    class Meta:
        ordering = ["min_purchased_nanos"]

    def __str__(self) -> str:
        return self.name


class KeySpend(models.Model):
    """What an API key with a spend limit has spent in one period: the reservations of
    its open holds authorized in the period plus the charges of its settled ones. One row
    per (key, period start), created by the first run of the period, so a period rolls
    over with no job. Written only under the key's account row lock (the authorize
    statement, settle, release, lease expiry); the rule is ratelimits/key_limits.py's."""

    # Written by the run path: no foreign-key constraint (keys are never deleted), as
    # for holds.
    api_key = models.ForeignKey("accounts.ApiKey", on_delete=models.PROTECT, related_name="+",
                                db_constraint=False, db_index=False)
    period_start = models.DateTimeField(help_text="UTC start of the period (1970-01-01 for "
                                        "a limit in total).")
    spent_nanos = models.BigIntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["api_key", "period_start"],
                                    name="keyspend_key_period_unique"),
        ]

    def __str__(self) -> str:
        return f"key {self.api_key_id} from {self.period_start:%Y-%m-%d}"


class KeySpendNotice(models.Model):
    """A key reached a share of its limit in a period: told once (the unique constraint),
    by an email sent after commit."""

    api_key = models.ForeignKey("accounts.ApiKey", on_delete=models.CASCADE, related_name="+")
    period_start = models.DateTimeField()
    percent = models.PositiveSmallIntegerField()
    spent_nanos = models.BigIntegerField()
    limit_nanos = models.BigIntegerField()
    created_at = models.DateTimeField()
    # When the email went out, or when the same settle reached a higher share, whose
    # email told it instead.
    sent_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["api_key", "period_start", "percent"],
                                    name="keyspendnotice_once_per_period"),
        ]

    def __str__(self) -> str:
        return f"key {self.api_key_id}: {self.percent}% from {self.period_start:%Y-%m-%d}"
