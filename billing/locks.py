"""The billing profile's row lock: taken before payment rows and the account row, never
after (the lock order is accounts/locks.py's)."""

from uuid import UUID

from billing.models import BillingProfile


def billing_profile_lock(*, account_id: UUID) -> BillingProfile:
    """Lock the account's billing profile, creating it on first use (the account id is
    its primary key, so concurrent first uses insert it once)."""
    profiles = BillingProfile.objects.select_for_update()
    try:
        return profiles.get(account_id=account_id)
    except BillingProfile.DoesNotExist:
        BillingProfile.objects.bulk_create([BillingProfile(account_id=account_id)],
                                           ignore_conflicts=True)
        return profiles.get(account_id=account_id)
