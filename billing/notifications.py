"""Emails to customers about their payments."""

from uuid import UUID

from django.conf import settings
from django.core.mail import send_mail
from django.template.loader import render_to_string

from accounts.models import Account
from billing.models import BillingProfile
from config.money import nanos_to_usd


def auto_reload_failed_notify(*, account_id: UUID, reason: str) -> None:
    """Tell the customer that auto-reload could not charge their card and is paused."""
    account = Account.objects.select_related("user").get(id=account_id)
    profile = BillingProfile.objects.get(account_id=account_id)
    context = {
        "email": account.user.email,
        "reason": reason,
        "amount_usd": nanos_to_usd(profile.auto_reload_amount_nanos),
        "threshold_usd": nanos_to_usd(profile.auto_reload_threshold_nanos),
        "balance_usd": nanos_to_usd(account.balance_nanos),
    }
    subject = render_to_string("emails/auto_reload_failed_subject.txt", context).strip()
    body = render_to_string("emails/auto_reload_failed.txt", context)
    send_mail(subject, body, settings.DEFAULT_FROM_EMAIL, [account.user.email])
