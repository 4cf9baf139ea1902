"""Telling a customer that an API key reached 80% and then 100% of its spend limit: once
each per key and period (a unique constraint, not a check-then-insert), by an email sent
after the settle that reached it commits."""

import logging
from datetime import datetime, timedelta
from functools import partial
from uuid import UUID

from django.conf import settings
from django.core.mail import EmailMultiAlternatives
from django.db import IntegrityError, transaction
from django.template.loader import render_to_string
from django.utils import timezone

from accounts.models import ApiKey
from config.money import nanos_to_usd
from ratelimits.key_limits import period_end
from ratelimits.models import KeySpendNotice

logger = logging.getLogger(__name__)

NOTICE_PERCENTS = (80, 100)
UNSENT_AFTER = timedelta(minutes=5)


def key_spend_notices_record(*, key_id: UUID, period_start_at: datetime, spent_nanos: int,
                             limit_nanos: int, now: datetime) -> list[int]:
    """Record the shares of the limit that the key's spend has reached in the period and
    that were not told yet; each is emailed once this transaction commits."""
    created = []
    for percent in NOTICE_PERCENTS:
        if spent_nanos * 100 < limit_nanos * percent:
            break
        try:
            with transaction.atomic():
                notice = KeySpendNotice.objects.create(
                    api_key_id=key_id, period_start=period_start_at, percent=percent,
                    spent_nanos=spent_nanos, limit_nanos=limit_nanos, created_at=now)
        except IntegrityError:
            continue  # told already this period
        created.append(notice.id)
    if not created:
        return created
    # One settle that reaches both shares sends one email, the higher one; the lower is
    # recorded as done, so it is never sent later in the period.
    *moot, told = created
    KeySpendNotice.objects.filter(id__in=moot).update(sent_at=now)
    transaction.on_commit(partial(key_spend_notice_dispatch, notice_id=told))
    return created


def key_spend_notice_dispatch(*, notice_id: int) -> None:
    # Tasks are entry points above the services: imported at call time, not at load.
    from ratelimits.tasks import key_spend_notice_send_task  # noqa: PLC0415

    try:
        key_spend_notice_send_task.delay(notice_id)
    except Exception:
        logger.exception("could not enqueue the key spend notice %s", notice_id)


def key_spend_notices_unsent_ids(*, now: datetime, older_than: timedelta = UNSENT_AFTER
                                 ) -> list[int]:
    """Notices recorded a while ago and still not sent: their task was never enqueued."""
    return list(KeySpendNotice.objects.filter(sent_at__isnull=True,
                                              created_at__lte=now - older_than)
                .order_by("id").values_list("id", flat=True))


def key_spend_notice_send(*, notice_id: int, now: datetime | None = None) -> bool:
    """Email the notice to the account's owner; a notice sent already is not sent again."""
    now = now or timezone.now()
    with transaction.atomic():
        notice = KeySpendNotice.objects.select_for_update().filter(
            id=notice_id, sent_at__isnull=True).first()
        if notice is None:
            return False
        key = ApiKey.objects.select_related("account__user").get(id=notice.api_key_id)
        resets_at = period_end(period=key.spend_limit_period or "total",
                               now=notice.period_start)
        context = {
            "key_name": key.name, "key_prefix": key.prefix, "percent": notice.percent,
            "limit_usd": nanos_to_usd(notice.limit_nanos),
            "spent_usd": nanos_to_usd(notice.spent_nanos),
            "period": key.spend_limit_period or "total", "resets_at": resets_at,
            "reached": notice.percent >= 100,
        }
        subject = render_to_string("emails/key_spend_limit_subject.txt", context).strip()
        message = EmailMultiAlternatives(
            subject, render_to_string("emails/key_spend_limit.txt", context),
            settings.DEFAULT_FROM_EMAIL, [key.account.user.email])
        message.attach_alternative(render_to_string("emails/key_spend_limit.html", context),
                                   "text/html")
        message.send()
        KeySpendNotice.objects.filter(id=notice.id).update(sent_at=now)
    return True
