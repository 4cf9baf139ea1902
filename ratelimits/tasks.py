"""Tasks take ids and call one service; a rerun is a no-op."""

from celery import shared_task
from django.utils import timezone

from ratelimits.key_limit_notices import key_spend_notice_send, key_spend_notices_unsent_ids


@shared_task(acks_late=True)
def key_spend_notice_send_task(notice_id: int) -> None:
    key_spend_notice_send(notice_id=notice_id)


@shared_task
def key_spend_notices_unsent_send() -> int:
    notice_ids = key_spend_notices_unsent_ids(now=timezone.now())
    for notice_id in notice_ids:
        key_spend_notice_send_task.delay(notice_id)
    return len(notice_ids)
