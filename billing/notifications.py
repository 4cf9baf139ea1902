"""Emails to customers about their money: a receipt after each purchase, the balance
crossing below the auto-reload threshold, a failed auto-reload, and credit that expires
in 3 days. Each is sent once per thing it is about (notifications.services)."""

import logging
from datetime import UTC, datetime, timedelta
from functools import partial
from uuid import UUID

from django.db import transaction
from django.urls import reverse
from django.utils import timezone

from accounts.models import Account
from billing.models import BillingProfile, CreditLot, LowBalanceEvent, Payment, Purchase
from notifications.models import EmailNotice
from notifications.services import email_send_once, site_url, usd_display

logger = logging.getLogger(__name__)

# Credit is announced this long before its lot expires (DESIGN.md: 3 days).
CREDIT_EXPIRY_NOTICE_AHEAD = timedelta(days=3)
# Lots that are refreshed on their own are not announced: the free grant comes back.
CREDIT_EXPIRY_NOT_ANNOUNCED = (CreditLot.Source.FREE_GRANT,)

# Where a lot's credit came from, as the email says it.
LOT_SOURCE_WORDS = {
    CreditLot.Source.PURCHASE: "a purchase",
    CreditLot.Source.FREE_GRANT: "the free plan's credit",
    CreditLot.Source.PLAN_GRANT: "your plan's monthly credit",
    CreditLot.Source.AUTO_RELOAD: "an auto-reload",
    CreditLot.Source.AUTO_SCALE: "an auto-scale purchase",
    CreditLot.Source.STAFF_GRANT: "a credit grant",
}

# The dashboard's pages the emails link to, by their URL names: a purchase's printable
# receipt, the credits page (lots and their expiry) and the auto-reload settings.
RECEIPT_URL_NAME = "dashboard:receipt"
CREDITS_URL_NAME = "dashboard:credits"
AUTO_RELOAD_URL_NAME = "dashboard:auto_reload"


def _day(moment: datetime) -> str:
    moment = moment.astimezone(UTC)
    return f"{moment.day} {moment:%b %Y}"


def _when(moment: datetime) -> str:
    return f"{_day(moment)}, {moment.astimezone(UTC):%H:%M} UTC"


# An email whose task could not be enqueued (the broker was down) is sent by the sweep
# (billing.tasks.money_emails_unsent_send) once it is this late, for things this recent.
UNSENT_AFTER = timedelta(minutes=5)
UNSENT_WITHIN = timedelta(days=3)


def _enqueue(task_name: str, *args) -> None:
    """Hand an email to a worker. A broker that cannot take it does not fail the caller
    (the money moved already); it is logged, and the sweep sends the email later."""
    # Tasks are entry points above the services: imported at call time, not at load.
    from billing import tasks  # noqa: PLC0415

    try:
        getattr(tasks, task_name).delay(*args)
    except Exception:
        logger.exception("could not enqueue %s for %s", task_name, args)


def purchase_receipt_email_enqueue(*, purchase_id: UUID) -> None:
    """Once the purchase's transaction commits, its receipt goes out from a worker."""
    transaction.on_commit(partial(_enqueue, "purchase_receipt_email", str(purchase_id)),
                          robust=True)


def low_balance_email_enqueue(*, low_balance_event_id: int) -> None:
    """Call once the crossing has committed (as its dispatch to auto-reload is)."""
    _enqueue("low_balance_email", low_balance_event_id)


def purchase_receipt_email_send(*, purchase_id: UUID | str) -> bool:
    """The receipt of a purchase: amount, date, how it was paid, reference, and the
    link to its printable receipt on the dashboard."""
    purchase = (Purchase.objects.select_related("account__user", "lot")
                .filter(id=purchase_id).first())
    if purchase is None:
        return False
    payment = (Payment.objects.select_related("card").filter(purchase=purchase).first())
    card = payment.card if payment is not None else None
    return email_send_once(
        kind=EmailNotice.Kind.PURCHASE_RECEIPT, subject_key=str(purchase.id),
        account=purchase.account, template="purchase_receipt", context={
            "amount": usd_display(purchase.amount_nanos),
            "credit": usd_display(purchase.lot.amount_nanos),
            "purchased_at": _when(purchase.purchased_at),
            "expires_on": _day(purchase.lot.expires_at),
            "kind": purchase.get_kind_display(),
            "paid_with": (f"{(card.brand or 'Card').title()} ending in {card.last4}"
                          if card is not None and card.last4 else
                          "Invoice or bank transfer" if purchase.kind == Purchase.Kind.INVOICE
                          else purchase.get_kind_display()),
            "reference": purchase.reference,
            "receipt_url": site_url(reverse(RECEIPT_URL_NAME, kwargs={"purchase_id": purchase.id})),
        })


def low_balance_email_send(*, low_balance_event_id: int) -> bool:
    """The balance crossed below the auto-reload threshold: once per crossing."""
    event = (LowBalanceEvent.objects.select_related("account__user")
             .filter(id=low_balance_event_id).first())
    if event is None:
        return False
    profile = BillingProfile.objects.filter(account_id=event.account_id).first()
    return email_send_once(
        kind=EmailNotice.Kind.LOW_BALANCE, subject_key=str(event.id), account=event.account,
        template="low_balance", context={
            "threshold": usd_display(event.threshold_nanos),
            "balance": usd_display(event.balance_after_nanos),
            "crossed_at": _when(event.created_at),
            "reload_amount": (usd_display(profile.auto_reload_amount_nanos)
                              if profile is not None and profile.auto_reload_enabled
                              else None),
            "reload_monthly_max": (usd_display(profile.auto_reload_monthly_max_nanos)
                                   if profile is not None else None),
            "credits_url": site_url(reverse(CREDITS_URL_NAME)),
            "auto_reload_url": site_url(reverse(AUTO_RELOAD_URL_NAME)),
        })


def auto_reload_failed_notify(*, account_id: UUID, reason: str) -> bool:
    """Tell the customer that auto-reload could not charge their card and is paused
    (once per pause)."""
    account = Account.objects.select_related("user").get(id=account_id)
    profile = BillingProfile.objects.get(account_id=account_id)
    paused_at = profile.auto_reload_paused_at or timezone.now()
    return email_send_once(
        kind=EmailNotice.Kind.AUTO_RELOAD_FAILED,
        subject_key=f"{account.id}:{paused_at.isoformat()}", account=account,
        template="auto_reload_failed", context={
            "reason": reason,
            "amount": usd_display(profile.auto_reload_amount_nanos),
            "threshold": usd_display(profile.auto_reload_threshold_nanos),
            "balance": usd_display(account.balance_nanos),
            "paused_at": _when(paused_at),
            "auto_reload_url": site_url(reverse(AUTO_RELOAD_URL_NAME)),
        })


def _not_emailed(kind: str, ids: list) -> list:
    sent = set(EmailNotice.objects.filter(kind=kind, subject_key__in=[str(i) for i in ids])
               .values_list("subject_key", flat=True))
    return [i for i in ids if str(i) not in sent]


def money_emails_unsent(*, now: datetime) -> tuple[list[UUID], list[int]]:
    """Receipts and low-balance emails that should have gone out and did not: purchases
    and crossings recorded between UNSENT_WITHIN and UNSENT_AFTER ago with no email sent
    about them (their task was never enqueued, or failed for good). Oldest first."""
    window = (now - UNSENT_WITHIN, now - UNSENT_AFTER)
    purchase_ids = list(Purchase.objects.filter(purchased_at__range=window)
                        .order_by("purchased_at", "id").values_list("id", flat=True))
    event_ids = list(LowBalanceEvent.objects.filter(created_at__range=window)
                     .order_by("created_at", "id").values_list("id", flat=True))
    return (_not_emailed(EmailNotice.Kind.PURCHASE_RECEIPT, purchase_ids),
            _not_emailed(EmailNotice.Kind.LOW_BALANCE, event_ids))


def credit_expiring_lot_ids(*, now: datetime) -> list[UUID]:
    """Lots with credit left that expire within CREDIT_EXPIRY_NOTICE_AHEAD and were not
    announced yet. Found through the accounts whose earliest expiry is that close (an
    indexed column), then their lots (indexed by account and expiry)."""
    horizon = now + CREDIT_EXPIRY_NOTICE_AHEAD
    lot_ids = list(CreditLot.objects.filter(
        account__credit_valid_until__lte=horizon, expires_at__gt=now,
        expires_at__lte=horizon, remaining_nanos__gt=0, expired_at__isnull=True,
    ).exclude(source__in=CREDIT_EXPIRY_NOT_ANNOUNCED).values_list("id", flat=True))
    return _not_emailed(EmailNotice.Kind.CREDIT_EXPIRING, lot_ids)


def credit_expiring_email_send(*, lot_id: UUID | str, now: datetime | None = None) -> bool:
    """Announce, once, the credit left in a lot that expires within 3 days. Nothing for a
    lot that is spent, already expired, or not that close to its expiry."""
    now = now or timezone.now()
    lot = CreditLot.objects.select_related("account__user").filter(id=lot_id).first()
    if (lot is None or lot.remaining_nanos <= 0 or lot.expired_at is not None
            or lot.source in CREDIT_EXPIRY_NOT_ANNOUNCED
            or not now < lot.expires_at <= now + CREDIT_EXPIRY_NOTICE_AHEAD):
        return False
    return email_send_once(
        kind=EmailNotice.Kind.CREDIT_EXPIRING, subject_key=str(lot.id), account=lot.account,
        template="credit_expiring", now=now, context={
            "remaining": usd_display(lot.remaining_nanos),
            "amount": usd_display(lot.amount_nanos),
            "source": LOT_SOURCE_WORDS.get(lot.source, "credit added"),
            "granted_on": _day(lot.granted_at),
            "expires_at": _when(lot.expires_at),
            "credits_url": site_url(reverse(CREDITS_URL_NAME)),
        })
