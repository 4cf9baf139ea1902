"""Periodic credit work. Tasks take ids and call one service; the fan-out tasks only
enqueue per-account work. Every task is a no-op when rerun."""

from celery import shared_task
from django.utils import timezone

from billing import auto_reload, credit, notifications
from billing.stripe_gateway import StripeUnavailable


@shared_task(acks_late=True)
def credit_lots_expire_for_account(account_id: str) -> None:
    credit.credit_lots_expire_due(account_id=account_id)


@shared_task
def credit_lots_expire_due() -> int:
    account_ids = credit.credit_expiry_due_account_ids(now=timezone.now())
    for account_id in account_ids:
        credit_lots_expire_for_account.delay(str(account_id))
    return len(account_ids)


@shared_task(acks_late=True)
def free_grant_refresh_for_account(account_id: str) -> None:
    credit.free_grant_ensure(account_id=account_id)


@shared_task
def free_grants_refresh_due() -> int:
    account_ids = credit.free_grant_due_account_ids(now=timezone.now())
    for account_id in account_ids:
        free_grant_refresh_for_account.delay(str(account_id))
    return len(account_ids)


# --- Payments ---------------------------------------------------------------------------
# acks_late: a worker that dies mid-task leaves the message to be redelivered; the services
# make every rerun a no-op or a resumption with the same Stripe idempotency key.


@shared_task(acks_late=True, autoretry_for=(StripeUnavailable,), retry_backoff=5,
             retry_backoff_max=300, max_retries=10)
def auto_reload_for_crossing(low_balance_event_id: int) -> str:
    # The outcome feeds the auto-reload metric (config/metrics.py, from the task's result).
    payment = auto_reload.auto_reload_run(low_balance_event_id=low_balance_event_id)
    return str(payment.status) if payment is not None else "skipped"


@shared_task(acks_late=True, autoretry_for=(StripeUnavailable,), retry_backoff=5,
             retry_backoff_max=300, max_retries=10)
def payment_resume(payment_id: str) -> None:
    auto_reload.payment_resume(payment_id=payment_id)


@shared_task
def payments_resume_stalled() -> int:
    now = timezone.now()
    payment_ids = auto_reload.payments_stalled(now=now)
    for payment_id in payment_ids:
        payment_resume.delay(str(payment_id))
    event_ids = auto_reload.low_balance_events_unhandled(now=now)
    for event_id in event_ids:
        auto_reload_for_crossing.delay(event_id)
    return len(payment_ids) + len(event_ids)


# --- Emails -------------------------------------------------------------------------------
# Each email goes out once per thing it is about (notifications.services.email_send_once);
# a mail server that is down or slow is retried later (smtplib's errors are OSErrors).
EMAIL_RETRY = {"acks_late": True, "autoretry_for": (OSError,), "retry_backoff": 30,
               "retry_backoff_max": 1800, "max_retries": 8}


@shared_task(**EMAIL_RETRY)
def purchase_receipt_email(purchase_id: str) -> None:
    notifications.purchase_receipt_email_send(purchase_id=purchase_id)


@shared_task(**EMAIL_RETRY)
def low_balance_email(low_balance_event_id: int) -> None:
    notifications.low_balance_email_send(low_balance_event_id=low_balance_event_id)


@shared_task(**EMAIL_RETRY)
def credit_expiring_email(lot_id: str) -> None:
    notifications.credit_expiring_email_send(lot_id=lot_id)


@shared_task
def money_emails_unsent_send() -> int:
    purchase_ids, event_ids = notifications.money_emails_unsent(now=timezone.now())
    for purchase_id in purchase_ids:
        purchase_receipt_email.delay(str(purchase_id))
    for event_id in event_ids:
        low_balance_email.delay(event_id)
    return len(purchase_ids) + len(event_ids)


@shared_task
def credit_expiring_emails_due() -> int:
    lot_ids = notifications.credit_expiring_lot_ids(now=timezone.now())
    for lot_id in lot_ids:
        credit_expiring_email.delay(str(lot_id))
    return len(lot_ids)
