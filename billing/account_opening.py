"""Opening an account: the user, the billing account on the free plan, its first free
grant and its tier, in one transaction."""

from datetime import datetime

from django.db import IntegrityError, transaction
from django.utils import timezone

from accounts.locks import account_lock
from accounts.models import Account, User
from accounts.services import normalize_email
from billing.credit import account_tier_refresh, free_grant_ensure_locked


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
