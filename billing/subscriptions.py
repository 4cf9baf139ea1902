"""Plan subscriptions on Stripe (the pay-as-you-go plan).

The account is on a paid plan while one of its subscriptions is live (active, trialing,
or past_due while Stripe retries the card) and back on the free plan when none is. Every
paid invoice grants the plan's credit and counts what was paid as purchased, once per
invoice (the invoice id is the purchase's reference). Subscription news may arrive in any
order: a subscription that ended stays ended, and older news never overwrites newer.
"""

from datetime import datetime
from uuid import UUID

from django.db import transaction
from django.utils import timezone

from accounts.locks import account_lock
from accounts.models import Account
from billing.cards import account_for_stripe_customer, stripe_customer_ensure, usable_card
from billing.credit import credit_grant, free_grant_ensure_locked, purchase_record
from billing.errors import NoCard, PaymentFailed, account_active_ensure, provider_error
from billing.ledger import Book
from billing.locks import billing_profile_lock
from billing.models import CreditLot, Payment, Plan, Purchase, Subscription
from billing.stripe_gateway import (
    CURRENCY,
    CardDeclined,
    InvoiceState,
    StripeGatewayError,
    SubscriptionState,
    stripe_gateway,
)
from config.api import ApplicationError
from config.money import cents_to_nanos

FREE_PLAN = "free"


class PlanNotAvailable(ApplicationError):
    code = "plan_not_available"
    message = "This plan cannot be subscribed to."


class AlreadySubscribed(ApplicationError):
    status = 409
    code = "already_subscribed"
    message = "The account already has a live subscription."


class NotSubscribed(ApplicationError):
    status = 404
    code = "not_subscribed"
    message = "The account has no live subscription."


def plan_code_for(state: SubscriptionState) -> str | None:
    """Which of our plans a Stripe subscription is for: our own record, the plan code we
    put in its metadata, or its price."""
    known = (Subscription.objects.filter(stripe_subscription_id=state.id)
             .values_list("plan_id", flat=True).first())
    if known:
        return known
    code = state.metadata.get("plan_code")
    if code and Plan.objects.filter(code=code).exists():
        return code
    return (Plan.objects.filter(stripe_price_id__in=[p for p in state.price_ids if p])
            .exclude(stripe_price_id="").values_list("code", flat=True).first())


def account_plan_sync_locked(*, account_id: UUID, now: datetime) -> Account:
    """Put the account on the plan of its live subscription, or on the free plan. Call
    with the billing profile locked."""
    live = (Subscription.objects.filter(account_id=account_id,
                                        status__in=Subscription.LIVE_STATUSES)
            .order_by("-created_at").values_list("plan_id", flat=True).first())
    wanted = live or FREE_PLAN
    account = account_lock(account_id=account_id)
    if account.plan_id != wanted:
        Account.objects.filter(id=account.id).update(plan_id=wanted)
        account.plan_id = wanted
        free_grant_ensure_locked(account=account, now=now)
    return account


def _stage(status: str) -> int:
    return 0 if status == "incomplete" else 1


def subscription_state_apply(*, state: SubscriptionState, event_at: datetime,
                             now: datetime | None = None) -> str:
    """Record a subscription's state as Stripe reported it at `event_at`, and switch the
    account's plan accordingly."""
    now = now or timezone.now()
    account_id = account_for_stripe_customer(state.customer_id)
    if account_id is None:
        return "ignored: unknown customer"
    plan_code = plan_code_for(state)
    with transaction.atomic():
        billing_profile_lock(account_id=account_id)
        sub = (Subscription.objects.select_for_update()
               .filter(stripe_subscription_id=state.id).first())
        final = state.status in Subscription.FINAL_STATUSES
        if sub is None:
            if plan_code is None:
                return "ignored: not one of our plans"
            sub = Subscription(account_id=account_id, plan_id=plan_code,
                               stripe_subscription_id=state.id, created_at=now)
        elif sub.status in Subscription.FINAL_STATUSES or (not final and (
                event_at < sub.status_at
                or (event_at == sub.status_at and _stage(state.status) < _stage(sub.status)))):
            # Stripe's timestamps are whole seconds and its deliveries unordered: within
            # one second, a subscription only moves forward (incomplete, then live).
            return f"ignored: older than the state recorded ({sub.status})"
        sub.status = state.status
        sub.status_at = event_at
        sub.cancel_at_period_end = state.cancel_at_period_end
        sub.current_period_end = state.current_period_end
        if final and sub.ended_at is None:
            sub.ended_at = now
        sub.save()
        account = account_plan_sync_locked(account_id=account_id, now=now)
        return f"subscription {state.status}; plan {account.plan_id}"


def invoice_paid_apply(*, invoice: InvoiceState, plan_code: str | None,
                       now: datetime | None = None) -> str:
    """A paid subscription invoice: grant the plan's credit and count what was paid as
    purchased, once per invoice."""
    now = now or timezone.now()
    account_id = account_for_stripe_customer(invoice.customer_id)
    if account_id is None:
        return "ignored: unknown customer"
    if not invoice.subscription_id or invoice.status != "paid":
        return "ignored: not a paid subscription invoice"
    if invoice.currency != CURRENCY:
        return f"ignored: currency {invoice.currency}"
    plan_code = (Subscription.objects.filter(stripe_subscription_id=invoice.subscription_id)
                 .values_list("plan_id", flat=True).first()) or plan_code
    plan = Plan.objects.filter(code=plan_code).first() if plan_code else None
    if plan is None:
        return "ignored: not one of our plans"
    paid = cents_to_nanos(invoice.amount_paid_cents)
    with transaction.atomic():
        billing_profile_lock(account_id=account_id)
        if paid == 0:
            if plan.credit_grant_nanos:
                credit_grant(account_id=account_id, amount_nanos=plan.credit_grant_nanos,
                             reason=f"{plan.name} plan credit ({invoice.id})",
                             source=CreditLot.Source.PLAN_GRANT,
                             grant_key=f"plan:{invoice.id}", now=now)
            return "granted the plan credit of an invoice paid with nothing"
        purchase, created = purchase_record(
            account_id=account_id, amount_nanos=paid,
            lot_amount_nanos=plan.credit_grant_nanos or paid, reference=invoice.id,
            kind=Purchase.Kind.SUBSCRIPTION, cash_book=Book.STRIPE_CASH,
            lot_source=CreditLot.Source.PLAN_GRANT, now=now)
        if invoice.payment_intent_id:
            # Lets a refund of the invoice's charge find its purchase.
            Payment.objects.bulk_create([Payment(
                account_id=account_id, purpose=Payment.Purpose.SUBSCRIPTION,
                status=Payment.Status.SUCCEEDED, amount_nanos=paid,
                idempotency_key=f"invoice:{invoice.id}",
                stripe_payment_intent_id=invoice.payment_intent_id, purchase=purchase,
                created_at=now, updated_at=now)], ignore_conflicts=True)
        return f"plan credit granted (purchase {purchase.id})" if created else \
            "already granted"


def invoice_failed_apply(*, invoice: InvoiceState, now: datetime | None = None) -> str:
    if not invoice.subscription_id:
        return "ignored: not a subscription invoice"
    updated = Subscription.objects.filter(stripe_subscription_id=invoice.subscription_id).update(
        last_invoice_failure=f"invoice {invoice.id} payment failed"[:255])
    return "recorded" if updated else "ignored: unknown subscription"


def plan_subscribe(*, account_id: UUID, plan_code: str = "payg",
                   now: datetime | None = None) -> Subscription:
    """Subscribe to a paid plan, paid by the default card. The account moves to the plan
    as soon as the subscription is live; its first invoice grants the plan's credit."""
    now = now or timezone.now()
    plan = Plan.objects.filter(code=plan_code).first()
    if plan is None or plan.monthly_price_nanos <= 0 or not plan.stripe_price_id:
        raise PlanNotAvailable()
    account_active_ensure(account_id=account_id)
    customer_id = stripe_customer_ensure(account_id=account_id, now=now)
    gateway = stripe_gateway()
    # The profile stays locked through the Stripe call, so two clicks make one subscription.
    with transaction.atomic():
        profile = billing_profile_lock(account_id=account_id)
        mine = Subscription.objects.filter(account_id=account_id)
        if mine.filter(status__in=[*Subscription.LIVE_STATUSES, "incomplete"]).exists():
            raise AlreadySubscribed()
        if usable_card(profile.default_card_id) is None:
            raise NoCard("Save a card before subscribing.")
        try:
            state = gateway.subscription_create(
                customer_id=customer_id, price_id=plan.stripe_price_id,
                metadata={"account_id": str(account_id), "plan_code": plan.code},
                idempotency_key=f"subscribe:{account_id}:{mine.count() + 1}")
        except CardDeclined as exc:
            raise PaymentFailed(exc.message, extra={"reason": exc.code}) from exc
        except StripeGatewayError as exc:
            raise provider_error(exc) from exc
        subscription_state_apply(state=state, event_at=now, now=now)
    if state.status not in Subscription.LIVE_STATUSES:
        try:
            state = gateway.subscription_cancel(state.id, at_period_end=False)
            subscription_state_apply(state=state, event_at=timezone.now(), now=now)
        except StripeGatewayError:
            pass  # Stripe expires an unpaid subscription on its own
        raise PaymentFailed("The plan's first payment did not go through.",
                            extra={"reason": "subscription_incomplete"})
    if state.latest_invoice_id:
        try:
            invoice = gateway.invoice_retrieve(state.latest_invoice_id)
        except StripeGatewayError:
            invoice = None  # the invoice.paid webhook will bring it
        if invoice is not None and invoice.status == "paid":
            invoice_paid_apply(invoice=invoice, plan_code=plan.code, now=now)
    return Subscription.objects.get(stripe_subscription_id=state.id)


def plan_subscription_cancel(*, account_id: UUID, at_period_end: bool = True,
                             now: datetime | None = None) -> Subscription:
    """Cancel the live subscription: at the end of the paid period (the default), or at
    once. The account returns to the free plan when the subscription ends."""
    now = now or timezone.now()
    sub = (Subscription.objects.filter(account_id=account_id,
                                       status__in=Subscription.LIVE_STATUSES)
           .order_by("-created_at").first())
    if sub is None:
        raise NotSubscribed()
    try:
        state = stripe_gateway().subscription_cancel(sub.stripe_subscription_id,
                                                     at_period_end=at_period_end)
    except StripeGatewayError as exc:
        raise provider_error(exc) from exc
    subscription_state_apply(state=state, event_at=now, now=now)
    sub.refresh_from_db()
    return sub
