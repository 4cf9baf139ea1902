import uuid
from datetime import UTC, datetime

from django.contrib.auth.models import AbstractBaseUser, BaseUserManager, PermissionsMixin
from django.db import models
from django.db.models.functions import Lower
from django.utils import timezone

# Stands for "never" in the hot path's time comparisons (a column that must stay
# comparable, so not NULL).
FAR_FUTURE = datetime(9999, 12, 31, tzinfo=UTC)


class UserManager(BaseUserManager):
    use_in_migrations = True

    def _create_user(self, email, password, **extra_fields):
        if not email:
            raise ValueError("An email address is required")
        user = self.model(email=self.normalize_email(email).lower(), **extra_fields)
        if password:
            user.set_password(password)
        else:
            user.set_unusable_password()
        user.save(using=self._db)
        return user

    def create_user(self, email, password=None, **extra_fields):
        extra_fields.setdefault("is_staff", False)
        extra_fields.setdefault("is_superuser", False)
        return self._create_user(email, password, **extra_fields)

    def create_superuser(self, email, password=None, **extra_fields):
        extra_fields.setdefault("is_staff", True)
        extra_fields.setdefault("is_superuser", True)
        return self._create_user(email, password, **extra_fields)


class User(AbstractBaseUser, PermissionsMixin):
    """A person who logs in: customers to the dashboard, staff to the admin console."""

    email = models.EmailField(unique=True)
    is_staff = models.BooleanField(default=False)
    is_active = models.BooleanField(default=True)
    date_joined = models.DateTimeField(default=timezone.now)

    objects = UserManager()

    USERNAME_FIELD = "email"
    EMAIL_FIELD = "email"
    REQUIRED_FIELDS: list[str] = []

    class Meta:
        constraints = [
            models.UniqueConstraint(Lower("email"), name="user_email_ci_unique"),
        ]

    def __str__(self) -> str:
        return self.email


class Account(models.Model):
    """A billing account: what holds credit, runs models and pays.

    The `*_nanos`, `slots_in_use` and `*_until` columns are the run path's working state.
    They are written only by the services that also write the lots, holds and ledger,
    under this row's lock, and `ledger_check` proves them equal to what they summarise.
    """

    class Status(models.TextChoices):
        ACTIVE = "active"
        SUSPENDED = "suspended"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    user = models.OneToOneField(User, on_delete=models.PROTECT, related_name="account")
    plan = models.ForeignKey("billing.Plan", on_delete=models.PROTECT, to_field="code",
                             default="free", related_name="+")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.ACTIVE)
    status_reason = models.CharField(max_length=255, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    # Sum of the lots' remaining credit (expired or not: expiry is recorded by a service).
    balance_nanos = models.BigIntegerField(default=0)
    # Sum of the reservations of open holds, and of their concurrency weights.
    held_nanos = models.BigIntegerField(default=0)
    slots_in_use = models.IntegerField(default=0)
    # Earliest expiry among lots with credit left; until then the balance is all live.
    credit_valid_until = models.DateTimeField(default=FAR_FUTURE)
    # Usage that the credit could not cover, recovered from the next credit added.
    receivable_nanos = models.BigIntegerField(default=0)
    # The auto-reload threshold while auto-reload is on (NULL: off or paused). A charge or
    # expiry that takes the balance from at or above it to below it records a
    # LowBalanceEvent in the same transaction.
    auto_reload_threshold_nanos = models.BigIntegerField(null=True, blank=True)

    # The unlock tier, derived from purchases in the rolling window, valid until the
    # oldest of those purchases ages out (or staff edit the tiers).
    tier = models.ForeignKey("ratelimits.Tier", on_delete=models.PROTECT, null=True,
                             blank=True, related_name="+")
    tier_max_params_b = models.DecimalField(max_digits=10, decimal_places=3, default=0)
    tier_concurrency = models.IntegerField(default=0)
    purchased_window_nanos = models.BigIntegerField(default=0)
    tier_valid_until = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.CheckConstraint(condition=models.Q(balance_nanos__gte=0),
                                   name="account_balance_non_negative"),
            models.CheckConstraint(condition=models.Q(held_nanos__gte=0),
                                   name="account_held_non_negative"),
            models.CheckConstraint(condition=models.Q(slots_in_use__gte=0),
                                   name="account_slots_non_negative"),
            models.CheckConstraint(condition=models.Q(receivable_nanos__gte=0),
                                   name="account_receivable_non_negative"),
        ]
        indexes = [
            models.Index(fields=["credit_valid_until"], name="account_credit_valid_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.user.email} ({self.id})"

    @property
    def email(self) -> str:
        return self.user.email

    @property
    def available_nanos(self) -> int:
        return self.balance_nanos - self.held_nanos


class ApiKey(models.Model):
    """A customer's API key. Only the SHA-256 of the full key is stored; the key is
    shown once, at creation. The key carries 256 bits of entropy, so a fast hash is
    enough, and a lookup by hash reveals nothing about the secret through timing."""

    class Kind(models.TextChoices):
        # Runs models (authorize) and reads the credit; never spends money.
        INFERENCE = "inference"
        # Works the customer API's money calls; never accepted by authorize.
        MANAGEMENT = "management"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    account = models.ForeignKey(Account, on_delete=models.PROTECT, related_name="api_keys")
    name = models.CharField(max_length=100)
    # Fixed at creation (the run path's key cache relies on it never changing).
    kind = models.CharField(max_length=16, choices=Kind.choices, default=Kind.INFERENCE,
                            editable=False)
    prefix = models.CharField(max_length=16, help_text="Shown to identify the key.")
    key_hash = models.CharField(max_length=64, unique=True)
    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [models.Index(fields=["account", "created_at"], name="apikey_account_idx")]

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    # A key is usable while neither revoked nor expired. The rule's one Python statement
    # is usable_at(); the authorize statement (metering/sql.py, RESERVE_SQL) says the
    # same in SQL, for the fast path.
    @staticmethod
    def usable_at(now: datetime) -> models.Q:
        return models.Q(revoked_at__isnull=True) & (
            models.Q(expires_at__isnull=True) | models.Q(expires_at__gt=now))
