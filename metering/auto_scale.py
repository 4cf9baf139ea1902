"""Auto-scale: a run refused for concurrency, sent with autoScale, instead buys the credit
that unlocks the next tier with more slots, within the customer's max monthly spend; one
purchase for a burst."""


import logging
import time
from datetime import datetime, timedelta
from uuid import UUID

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from accounts.models import Account
from billing.cards import usable_card
from billing.locks import billing_profile_lock
from billing.models import BillingProfile, Payment
from billing.payment_outcomes import (
    STRIPE_MINIMUM_CHARGE_CENTS,
    Purpose,
    Status,
    charge_off_session,
    claim_until,
)
from billing.selectors import month_spent_nanos
from billing.stripe_gateway import (
    StripeGatewayError,
)
from config.money import NANOS_PER_CENT, cents_to_nanos
from metering.holds import account_bring_current
from ratelimits.models import Tier

# --- Auto-scale -------------------------------------------------------------------------------

logger = logging.getLogger(__name__)


def auto_scale_settings_set(*, account_id: UUID, max_monthly_nanos: int,
                            now: datetime | None = None) -> BillingProfile:
    now = now or timezone.now()
    with transaction.atomic():
        profile = billing_profile_lock(account_id=account_id)
        BillingProfile.objects.filter(account_id=account_id).update(
            auto_scale_max_monthly_nanos=max_monthly_nanos, updated_at=now)
        profile.auto_scale_max_monthly_nanos = max_monthly_nanos
        return profile


def _ceil_to_cents(nanos: int) -> int:
    return -(-nanos // NANOS_PER_CENT) * NANOS_PER_CENT


def auto_scale_purchase(*, account_id: UUID, now: datetime | None = None) -> bool:
    """Buy the credit that unlocks the next tier with more concurrency slots, on the
    default card, within the account's max monthly spend, so that a run refused for
    concurrency can go ahead. The amount is that tier's threshold less what the account
    purchased in the window, rounded up to whole cents (at least Stripe's minimum charge).

    Returns True when the tier was raised, by this call or by another caller of the same
    burst (whose purchase in flight this call waits for); False when no purchase can be
    made (no card, top tier, over the monthly maximum, declined). Call it outside any
    transaction: it commits the decision before charging, and may wait."""
    now = now or timezone.now()
    observed = Account.objects.values_list("purchased_window_nanos", flat=True).get(
        id=account_id)
    burst_start = now - timedelta(seconds=settings.AUTO_SCALE_BURST_SECONDS)
    with transaction.atomic():
        profile = billing_profile_lock(account_id=account_id)
        account = account_bring_current(account_id=account_id, now=now)
        if account.status != Account.Status.ACTIVE:
            return False
        if account.purchased_window_nanos > observed:
            return True  # another caller's purchase raised the tier meanwhile
        mine = Payment.objects.filter(account_id=account_id, purpose=Purpose.AUTO_SCALE)
        if mine.filter(status=Status.SUCCEEDED, updated_at__gte=burst_start).exists():
            return True  # the same burst already bought its tier
        in_flight = mine.filter(status__in=Payment.IN_FLIGHT).first()
        if in_flight is None:
            # The next tier that adds concurrency slots: auto-scale answers a run refused
            # for concurrency, and a tier with no more slots would not let it run.
            tier = (Tier.objects.filter(min_purchased_nanos__gt=account.purchased_window_nanos,
                                        concurrency__gt=account.tier_concurrency)
                    .order_by("min_purchased_nanos").first())
            card = usable_card(profile.default_card_id)
            if tier is None or card is None or not profile.stripe_customer_id:
                return False
            amount = max(_ceil_to_cents(tier.min_purchased_nanos - account.purchased_window_nanos),
                         cents_to_nanos(STRIPE_MINIMUM_CHARGE_CENTS))
            spent = month_spent_nanos(account_id=account_id, purpose=Purpose.AUTO_SCALE, now=now)
            if spent + amount > profile.auto_scale_max_monthly_nanos:
                return False
            # Numbered per account under the profile lock: the same decision, retried, has
            # the same key; the next decision has the next one.
            number = mine.count() + 1
            payment = Payment.objects.create(
                account_id=account_id, purpose=Purpose.AUTO_SCALE, amount_nanos=amount,
                card=card, idempotency_key=f"auto-scale:{account_id}:{number}",
                claimed_until=claim_until(now), created_at=now, updated_at=now)
            customer_id = profile.stripe_customer_id
    if in_flight is not None:
        return _payment_wait(payment_id=in_flight.id).status == Status.SUCCEEDED
    try:
        payment = charge_off_session(payment=payment, customer_id=customer_id,
                                      payment_method_id=card.stripe_payment_method_id, now=now)
    except StripeGatewayError:
        logger.warning("auto-scale payment %s: Stripe unavailable", payment.id)
        return False
    return payment.status == Status.SUCCEEDED


def _payment_wait(*, payment_id: UUID) -> Payment:
    deadline = time.monotonic() + settings.AUTO_SCALE_WAIT_SECONDS
    while True:
        payment = Payment.objects.get(id=payment_id)
        if payment.status not in Payment.IN_FLIGHT or time.monotonic() >= deadline:
            return payment
        time.sleep(0.05)
