import hashlib
import secrets
from datetime import datetime, timedelta
from uuid import UUID

from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.utils import timezone

from accounts.locks import account_lock
from accounts.models import Account, ApiKey, User
from billing.services import free_grant_ensure_locked
from config.api import ApplicationError
from ratelimits.services import account_tier_refresh

API_KEY_PREFIX = "bk_"
_PUBLIC_ALPHABET = "abcdefghijkmnopqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789"


class AccountNotFound(ApplicationError):
    status = 404
    code = "account_not_found"
    message = "No account with this id."


class ApiKeyNotFound(ApplicationError):
    status = 404
    code = "api_key_not_found"
    message = "No API key with this id on this account."


def normalize_email(email: str) -> str:
    return email.strip().lower()


@transaction.atomic
def account_create(*, email: str, now: datetime | None = None) -> tuple[Account, bool]:
    """Open an account on the free plan with its free grant. The same email again returns
    the existing account (the unique email constraint decides, not a prior lookup)."""
    now = now or timezone.now()
    email = normalize_email(email)
    try:
        with transaction.atomic():
            user = User.objects.create_user(email=email, date_joined=now)
    except IntegrityError:
        user = User.objects.get(email__iexact=email)
    try:
        with transaction.atomic():
            account = Account.objects.create(user=user, plan_id="free", created_at=now,
                                             tier_valid_until=now)
    except IntegrityError:
        return Account.objects.get(user=user), False
    account = account_lock(account_id=account.id)
    free_grant_ensure_locked(account=account, now=now)
    account_tier_refresh(account=account, now=now)
    return account, True


def account_get(*, account_id: UUID | str) -> Account:
    try:
        return Account.objects.select_related("user", "tier").get(id=account_id)
    except (Account.DoesNotExist, ValidationError, ValueError, TypeError):
        raise AccountNotFound() from None


@transaction.atomic
def account_status_set(*, account_id: UUID, status: str, reason: str = "") -> Account:
    account = account_lock(account_id=account_id)
    Account.objects.filter(id=account.id).update(status=status, status_reason=reason[:255])
    account.status, account.status_reason = status, reason[:255]
    return account


def api_key_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def api_key_generate() -> tuple[str, str]:
    """A new key: a recognisable public prefix and 256 bits of secret. Returns
    (full key, prefix)."""
    public = "".join(secrets.choice(_PUBLIC_ALPHABET) for _ in range(8))
    prefix = f"{API_KEY_PREFIX}{public}"
    return f"{prefix}_{secrets.token_urlsafe(32)}", prefix


# Last-used times are written at most once a minute per key and process, never on
# every call.
LAST_USED_RESOLUTION = timedelta(minutes=1)
LAST_USED_MEMORY = 100_000  # keys remembered per process; forgetting one costs one write
_last_used_written: dict[UUID, datetime] = {}


def api_key_touch(*, api_key_id: UUID, now: datetime) -> None:
    written = _last_used_written.get(api_key_id)
    if written is not None and now - written < LAST_USED_RESOLUTION:
        return
    if len(_last_used_written) >= LAST_USED_MEMORY:
        _last_used_written.clear()
    _last_used_written[api_key_id] = now
    ApiKey.objects.filter(id=api_key_id).exclude(
        last_used_at__gt=now - LAST_USED_RESOLUTION).update(last_used_at=now)


def api_key_create(*, account_id: UUID, name: str, expires_at: datetime | None = None,
                   kind: str = ApiKey.Kind.INFERENCE,
                   now: datetime | None = None) -> tuple[ApiKey, str]:
    """Create a key; the full secret is returned here only and stored only as a hash.
    `kind`: an inference key runs models, a management key makes the money calls."""
    if kind not in ApiKey.Kind.values:
        raise ApplicationError(extra={"fields": {"kind": [
            f"One of: {', '.join(ApiKey.Kind.values)}."]}})
    now = now or timezone.now()
    key, prefix = api_key_generate()
    api_key = ApiKey.objects.create(account_id=account_id, name=name, prefix=prefix,
                                    key_hash=api_key_hash(key), created_at=now,
                                    expires_at=expires_at, kind=kind)
    return api_key, key


def api_key_revoke(*, account_id: UUID, key_id: UUID | str,
                   now: datetime | None = None) -> ApiKey:
    """Revoke a key: it fails authorize from the next call on. Revoking twice is a no-op."""
    now = now or timezone.now()
    try:
        api_key = ApiKey.objects.get(id=key_id, account_id=account_id)
    except (ApiKey.DoesNotExist, ValidationError, ValueError, TypeError):
        raise ApiKeyNotFound() from None
    ApiKey.objects.filter(id=api_key.id, revoked_at__isnull=True).update(revoked_at=now)
    api_key.refresh_from_db(fields=["revoked_at"])
    return api_key
