"""Concurrency slots: a run takes its size class's weight in slots, up to the tier's
limit, until it is settled, released or its lease lapses (metering/holds.py). The fast
path checks the same rule in SQL (metering/sql.py, RESERVE_SQL)."""

from accounts.models import Account
from ratelimits.errors import ConcurrencyLimit


def slots_refusal(*, account: Account, weight: int) -> ConcurrencyLimit | None:
    """Why the account cannot take `weight` more slots now (None: it can). A run that
    takes no slot (a closed model) is never refused for slots, not even when a lower tier
    now allows fewer than the runs still going."""
    if not weight or account.slots_in_use + weight <= account.tier_concurrency:
        return None
    return ConcurrencyLimit(
        extra={"limit": account.tier_concurrency, "in_use": account.slots_in_use,
               "requested": weight},
        headers={"Retry-After": "1"})
