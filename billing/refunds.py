"""Refunds and disputes: money paid back on a purchase.

A refund (or a dispute lost) takes back the unspent credit of the purchase's lot, up to
the amount paid back; what was already spent is the platform's loss (`refund_shortfall`).
The ledger transaction has three legs: customer_credit -clawed (on the lot), stripe_cash
+paid back, refund_shortfall -(paid back - clawed). The purchase's refunded amount rises,
so the tier is recomputed at once.

Each is applied once per Stripe refund or dispute id (a unique constraint, under the
account lock), whether staff started it here or Stripe reported it, in either order.
A dispute also suspends the account, once, until staff act; a dispute won leaves the
suspension for staff to lift.
"""

from datetime import datetime
from uuid import UUID

from django.db import transaction
from django.db.models import F
from django.utils import timezone

from accounts.locks import account_lock
from accounts.models import Account
from accounts.services import account_status_set
from billing.cards import account_for_stripe_customer
from billing.credit import account_balance_apply, account_tier_refresh, credit_lots_expire
from billing.errors import PaymentProviderError, provider_error
from billing.ledger import Book, Kind, Leg, ledger_post
from billing.locks import billing_profile_lock
from billing.models import CreditLot, Dispute, Payment, Purchase, Reversal
from billing.stripe_gateway import (
    ChargeState,
    DisputeState,
    RefundState,
    StripeGatewayError,
    stripe_gateway,
)
from config.api import ApplicationError
from config.money import NANOS_PER_CENT, cents_to_nanos, nanos_to_cents, nanos_to_usd

DISPUTE_CLOSED = ("won", "lost", "warning_closed")


class NotRefundable(ApplicationError):
    code = "not_refundable"
    message = "This purchase was not paid through Stripe and cannot be refunded here."


class InvalidRefundAmount(ApplicationError):
    code = "invalid_request"
    message = "The refund amount is invalid."


def purchase_payment_intent_id(purchase: Purchase) -> str | None:
    """The PaymentIntent that paid for the purchase, if it was paid through Stripe."""
    intent_id = (Payment.objects.filter(purchase=purchase)
                 .values_list("stripe_payment_intent_id", flat=True).first())
    if intent_id:
        return intent_id
    return purchase.reference if purchase.reference.startswith("pi_") else None


def purchase_for_payment_intent(payment_intent_id: str | None) -> Purchase | None:
    if not payment_intent_id:
        return None
    purchase_id = (Payment.objects.filter(stripe_payment_intent_id=payment_intent_id,
                                          purchase__isnull=False)
                   .values_list("purchase_id", flat=True).first())
    if purchase_id:
        return Purchase.objects.get(id=purchase_id)
    return Purchase.objects.filter(reference=payment_intent_id).first()


def reversal_apply(*, purchase_id: UUID, stripe_id: str, kind: str, amount_nanos: int,
                   reason: str = "", now: datetime | None = None) -> tuple[Reversal, bool]:
    """Pay back `amount_nanos` of a purchase: claw back what is left of its lot, up to
    that amount. A second call with the same Stripe id returns the first reversal."""
    now = now or timezone.now()
    account_id = Purchase.objects.values_list("account_id", flat=True).get(id=purchase_id)
    with transaction.atomic():
        account = account_lock(account_id=account_id)
        existing = Reversal.objects.filter(stripe_id=stripe_id).first()
        if existing is not None:
            return existing, False
        credit_lots_expire(account=account, now=now)  # expired credit is not clawed back
        purchase = Purchase.objects.get(id=purchase_id)
        amount = max(0, min(amount_nanos, purchase.amount_nanos - purchase.refunded_nanos))
        lot = CreditLot.objects.get(id=purchase.lot_id)
        clawed = min(lot.remaining_nanos, amount) if lot.expires_at > now else 0
        txn = None
        if amount > 0:
            if clawed:
                CreditLot.objects.filter(id=lot.id).update(
                    remaining_nanos=F("remaining_nanos") - clawed)
            label = "Refund" if kind == Reversal.Kind.REFUND else "Dispute lost"
            txn = ledger_post(
                kind=Kind.REFUND, account_id=account.id, now=now,
                memo=f"{label} {stripe_id} on purchase {purchase.reference}",
                legs=[Leg(Book.CUSTOMER_CREDIT, -clawed, account.id, lot.id),
                      Leg(Book.STRIPE_CASH, amount),
                      Leg(Book.REFUND_SHORTFALL, -(amount - clawed))])
            if clawed:
                account_balance_apply(account=account, balance_delta=-clawed)
            Purchase.objects.filter(id=purchase.id).update(
                refunded_nanos=F("refunded_nanos") + amount)
            account_tier_refresh(account=account, now=now)
        reversal = Reversal.objects.create(
            account=account, purchase=purchase, kind=kind, stripe_id=stripe_id,
            amount_nanos=amount, clawed_nanos=clawed, reason=reason[:255],
            ledger_transaction=txn, created_at=now)
        return reversal, True


def purchase_refund(*, purchase_id: UUID, amount_nanos: int | None = None, reason: str = "",
                    now: datetime | None = None) -> Reversal:
    """Staff refund, full (the default: what is not refunded yet) or partial, through
    Stripe. The refund is applied here and not again when Stripe reports it."""
    now = now or timezone.now()
    purchase = Purchase.objects.get(id=purchase_id)
    intent_id = purchase_payment_intent_id(purchase)
    if intent_id is None:
        raise NotRefundable()
    # The profile lock keeps two staff members from refunding the same money twice.
    with transaction.atomic():
        billing_profile_lock(account_id=purchase.account_id)
        purchase.refresh_from_db()
        refundable = purchase.amount_nanos - purchase.refunded_nanos
        amount = refundable if amount_nanos is None else amount_nanos
        if amount <= 0 or amount % NANOS_PER_CENT or amount > refundable:
            raise InvalidRefundAmount(
                f"The refund must be whole cents, more than 0 and at most "
                f"{nanos_to_usd(refundable)} USD (what is not refunded yet).")
        try:
            refund = stripe_gateway().refund_create(
                payment_intent_id=intent_id, amount_cents=nanos_to_cents(amount),
                metadata={"purchase_id": str(purchase.id), "reason": reason[:200]},
                idempotency_key=f"refund:{purchase.id}:{purchase.refunded_nanos}:{amount}")
        except StripeGatewayError as exc:
            raise provider_error(exc) from exc
        if refund.status in ("failed", "canceled"):
            raise PaymentProviderError(f"Stripe did not make the refund ({refund.status}).")
        reversal, _ = reversal_apply(purchase_id=purchase.id, stripe_id=refund.id,
                                     kind=Reversal.Kind.REFUND,
                                     amount_nanos=cents_to_nanos(refund.amount_cents),
                                     reason=reason, now=now)
        return reversal


def charge_refunds_apply(*, charge: ChargeState, refunds: list[RefundState],
                         now: datetime | None = None) -> str:
    """charge.refunded: apply each refund of the charge that is not applied yet."""
    now = now or timezone.now()
    purchase = purchase_for_payment_intent(charge.payment_intent_id)
    if purchase is None:
        return "ignored: no purchase for this charge"
    applied = 0
    for refund in refunds:
        if refund.status in ("succeeded", "pending"):
            _, created = reversal_apply(purchase_id=purchase.id, stripe_id=refund.id,
                                        kind=Reversal.Kind.REFUND,
                                        amount_nanos=cents_to_nanos(refund.amount_cents),
                                        reason="reported by Stripe", now=now)
            applied += created
    return f"{applied} refund(s) applied"


def dispute_apply(*, dispute: DisputeState, charge: ChargeState | None, event_at: datetime,
                  now: datetime | None = None) -> str:
    """Record a dispute's news. The first news of a dispute suspends the account; a
    dispute lost claws back like a refund; a dispute won changes nothing else (the
    suspension stays until staff lift it)."""
    now = now or timezone.now()
    intent_id = dispute.payment_intent_id or (charge.payment_intent_id if charge else None)
    purchase = purchase_for_payment_intent(intent_id)
    account_id = purchase.account_id if purchase else account_for_stripe_customer(
        charge.customer_id if charge else None)
    if account_id is None:
        return "ignored: no account for this dispute"
    with transaction.atomic():
        Dispute.objects.bulk_create([Dispute(
            account_id=account_id, purchase=purchase, stripe_dispute_id=dispute.id,
            stripe_charge_id=dispute.charge_id or "",
            amount_nanos=cents_to_nanos(dispute.amount_cents), status=dispute.status,
            reason=dispute.reason[:64], status_at=event_at, created_at=now)],
            ignore_conflicts=True)
        row = Dispute.objects.select_for_update().get(stripe_dispute_id=dispute.id)
        if row.closed_at is None and event_at >= row.status_at:
            row.status, row.status_at = dispute.status, event_at
            row.amount_nanos = cents_to_nanos(dispute.amount_cents)
        closed = dispute.status in DISPUTE_CLOSED
        if closed and row.closed_at is None:
            row.status, row.status_at, row.closed_at = dispute.status, event_at, now
        outcome = [f"dispute {row.status}"]
        if row.suspended_at is None:
            account_status_set(account_id=account_id, status=Account.Status.SUSPENDED,
                               reason=f"Payment dispute {dispute.id}: suspended until staff "
                                      f"review it")
            row.suspended_at = now
            outcome.append("account suspended")
        if dispute.status == "lost" and purchase is not None:
            reversal, created = reversal_apply(
                purchase_id=purchase.id, stripe_id=dispute.id, kind=Reversal.Kind.DISPUTE,
                amount_nanos=cents_to_nanos(dispute.amount_cents),
                reason=f"dispute lost ({dispute.reason})", now=now)
            if created:
                outcome.append(f"clawed back {nanos_to_usd(reversal.clawed_nanos)} USD")
        row.save()
        return "; ".join(outcome)
