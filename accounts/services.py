import hashlib
import secrets
from datetime import datetime, timedelta
from uuid import UUID

from django.db import transaction
from django.utils import timezone

from accounts.locks import account_lock
from accounts.models import Account, ApiKey
from config.api import ApplicationError
from config.caching import TtlCache
from config.lookups import get_or_raise

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


class InvalidApiKey(ApplicationError):
    status = 401
    code = "invalid_api_key"
    message = "The API key is unknown, revoked or expired."


def normalize_email(email: str) -> str:
    return email.strip().lower()


def account_get(*, account_id: UUID | str) -> Account:
    return get_or_raise(Account.objects.select_related("user", "tier"), AccountNotFound,
                        id=account_id)


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
# every call: the cache remembers, per key, that this process wrote it lately.
LAST_USED_RESOLUTION = timedelta(minutes=1)
_last_used_written = TtlCache(ttl=LAST_USED_RESOLUTION.total_seconds(), max_entries=100_000)


def api_key_touch(*, api_key_id: UUID, now: datetime) -> None:
    def write() -> datetime:
        ApiKey.objects.filter(id=api_key_id).exclude(
            last_used_at__gt=now - LAST_USED_RESOLUTION).update(last_used_at=now)
        return now

    _last_used_written.get(api_key_id, write, now=now.timestamp())


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
    api_key = get_or_raise(ApiKey.objects, ApiKeyNotFound, id=key_id, account_id=account_id)
    ApiKey.objects.filter(id=api_key.id, revoked_at__isnull=True).update(revoked_at=now)
    api_key.refresh_from_db(fields=["revoked_at"])
    return api_key
