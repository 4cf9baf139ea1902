"""Email tasks take ids and call one service; a rerun sends nothing twice."""

from celery import shared_task

from notifications import services

# A mail server that is down or slow: try again later (smtplib's errors are OSErrors).
RETRY = {"acks_late": True, "autoretry_for": (OSError,), "retry_backoff": 30,
         "retry_backoff_max": 1800, "max_retries": 8}


@shared_task(**RETRY)
def account_welcome_email(account_id: str) -> None:
    services.account_welcome_email_send(account_id=account_id)
