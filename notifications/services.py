"""Emails to customers: one small helper renders a template from templates/emails/ in
its three parts (`<name>_subject.txt`, `<name>.txt`, `<name>.html`) and sends it once per
thing it is about. The emails themselves are built where their subject lives (the
welcome here; purchases, balances and lots in billing/notifications.py)."""

import logging
from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

from django.conf import settings
from django.core.mail import EmailMultiAlternatives
from django.db import IntegrityError, transaction
from django.template.loader import render_to_string
from django.utils import timezone

from accounts.models import Account
from notifications.models import EmailNotice

NANOS_PER_USD = 10**9

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RenderedEmail:
    subject: str
    text: str
    html: str


def site_url(path: str) -> str:
    """An absolute link to a page of the service, for emails (SITE_URL + path)."""
    return f"{settings.SITE_URL.rstrip('/')}/{path.lstrip('/')}"


def usd_display(nanos: int) -> str:
    """Dollars as a person reads them: "$1,234.50", and the sub-cent digits only when
    there are any ("$0.0042"). Exact: from the integer, never through a float."""
    whole, fraction = divmod(abs(nanos), NANOS_PER_USD)
    digits = f"{fraction:09d}".rstrip("0").ljust(2, "0")
    sign = "-" if nanos < 0 else ""
    return f"{sign}${whole:,}.{digits}"


def email_render(*, template: str, context: dict) -> RenderedEmail:
    context = {"site_url": site_url("/"), **context}
    subject = render_to_string(f"emails/{template}_subject.txt", context)
    return RenderedEmail(
        subject=" ".join(subject.split()),  # one line, whatever the template's layout
        text=render_to_string(f"emails/{template}.txt", context).strip() + "\n",
        html=render_to_string(f"emails/{template}.html", context))


def email_send_once(*, kind: str, subject_key: str, account: Account, template: str,
                    context: dict, now: datetime | None = None) -> bool:
    """Send the email to the account's owner unless this (kind, subject_key) was sent
    already. Returns whether it was sent now.

    The notice row and the sending share one transaction: a concurrent sender blocks on
    the unique row until this one commits, then finds it; a failed send rolls the row
    back, so a retry sends. (Only a crash between sending and committing can send twice.)"""
    recipient = account.user.email
    email = email_render(template=template, context={"email": recipient, **context})
    with transaction.atomic():
        try:
            with transaction.atomic():
                EmailNotice.objects.create(
                    kind=kind, subject_key=subject_key, account=account, recipient=recipient,
                    subject=email.subject[:255], sent_at=now or timezone.now())
        except IntegrityError:
            return False
        message = EmailMultiAlternatives(email.subject, email.text,
                                         settings.DEFAULT_FROM_EMAIL, [recipient])
        message.attach_alternative(email.html, "text/html")
        message.send()
    logger.info("email %s about %s sent to account %s", kind, subject_key, account.id)
    return True


def account_welcome_email_send(*, account_id: UUID | str) -> bool:
    """Welcome a new customer (once per account)."""
    account = Account.objects.select_related("user").filter(id=account_id).first()
    if account is None:
        return False
    return email_send_once(
        kind=EmailNotice.Kind.WELCOME, subject_key=str(account.id), account=account,
        template="welcome", context={
            "free_credit": usd_display(account.balance_nanos),
            "dashboard_url": site_url("/"),
        })


def account_welcome_email_enqueue(*, account_id: UUID) -> None:
    """For sign-up: the welcome email goes out from a worker once the account's
    transaction has committed."""
    # Tasks are entry points above the services: imported at call time, not at load.
    from notifications.tasks import account_welcome_email  # noqa: PLC0415

    transaction.on_commit(lambda: account_welcome_email.delay(str(account_id)), robust=True)
