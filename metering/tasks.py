from celery import shared_task
from django.utils import timezone

from metering.holds import holds_expire, holds_expire_due_account_ids


@shared_task(acks_late=True)
def holds_expire_for_account(account_id: str) -> int:
    # The count feeds the holds-expired metric (config/metrics.py, from the task's result).
    return holds_expire(account_id=account_id)


@shared_task
def holds_expire_due() -> int:
    """Free the money and slots of holds whose gateway vanished (lease ran out)."""
    account_ids = holds_expire_due_account_ids(now=timezone.now())
    for account_id in account_ids:
        holds_expire_for_account.delay(str(account_id))
    return len(account_ids)
