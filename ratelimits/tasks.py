"""Tasks take ids and call one service; a rerun is a no-op."""

from celery import shared_task

from ratelimits.key_limit_notices import key_spend_notice_send


@shared_task(acks_late=True)
def key_spend_notice_send_task(notice_id: int) -> None:
    key_spend_notice_send(notice_id=notice_id)
