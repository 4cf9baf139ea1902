"""Periodic credit work. Tasks take ids and call one service; the fan-out tasks only
enqueue per-account work. Every task is a no-op when rerun."""

from celery import shared_task
from django.utils import timezone

from billing import services


@shared_task(acks_late=True)
def credit_lots_expire_for_account(account_id: str) -> None:
    services.credit_lots_expire_due(account_id=account_id)


@shared_task
def credit_lots_expire_due() -> int:
    account_ids = services.credit_expiry_due_account_ids(now=timezone.now())
    for account_id in account_ids:
        credit_lots_expire_for_account.delay(str(account_id))
    return len(account_ids)


@shared_task(acks_late=True)
def free_grant_refresh_for_account(account_id: str) -> None:
    services.free_grant_ensure(account_id=account_id)


@shared_task
def free_grants_refresh_due() -> int:
    account_ids = services.free_grant_due_account_ids(now=timezone.now())
    for account_id in account_ids:
        free_grant_refresh_for_account.delay(str(account_id))
    return len(account_ids)
