from decimal import Decimal

from accounts.models import Account


def params_b_number(value: Decimal) -> int | float:
    """A model size as a JSON number: 70, or 7.5."""
    return int(value) if value == value.to_integral_value() else float(value)


def account_tier_summary(*, account: Account) -> dict:
    return {
        "name": account.tier.name if account.tier else None,
        "max_params_b": params_b_number(account.tier_max_params_b),
        "concurrency": account.tier_concurrency,
    }


def account_summary(*, account: Account) -> dict:
    return {
        "account_id": str(account.id),
        "email": account.user.email,
        "plan": account.plan_id,
        "status": account.status,
        "balance_nanos": account.balance_nanos,
        "held_nanos": account.held_nanos,
        "available_nanos": max(0, account.balance_nanos - account.held_nanos),
        "purchased_window_nanos": account.purchased_window_nanos,
        "tier": account_tier_summary(account=account),
        "concurrency": {"in_use": account.slots_in_use, "limit": account.tier_concurrency},
    }
