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
