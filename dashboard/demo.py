"""The demo customer's month, for `make run`: lots bought at different times (one expiring
within the week), keys, a month of runs across open and closed models, and, when payments
go to the local Stripe stand-in, a card and a card purchase with its receipt.

Everything goes through the services, on a clock moved back in time, so the books balance
(`manage.py ledger_check`) as after any real month."""

import random
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

import requests
from django.conf import settings
from django.utils import timezone

from accounts.models import Account
from accounts.services import api_key_create
from billing.account_opening import account_create
from billing.cards import card_save, card_setup_start
from billing.credit import credit_grant, purchase_record
from billing.ledger import Book
from billing.models import CreditLot, Plan, Purchase
from billing.purchases import purchase_start
from config.api import ApplicationError
from metering.authorize import hold_authorize
from metering.models import Hold
from metering.settle import Usage, hold_settle

USD = 10**9
DAYS = 30
GOOD_CARD = "4242424242424242"


@dataclass(frozen=True)
class DemoCustomer:
    account: Account
    created: bool
    card_purchase: Purchase | None


def _run(*, key: str, model_id: str, request_id: str, at: datetime, rng: random.Random,
         closed: bool) -> None:
    """One run: authorize at `at`, settle when it ends. Refusals (a model the tier does not
    unlock yet, no credit left) are what a real month has too: skipped."""
    try:
        if closed:
            tokens_in, tokens_out = rng.randint(2_000, 30_000), rng.randint(300, 3_000)
            hold = hold_authorize(api_key=key, model_id=model_id, request_id=request_id,
                                  estimate_input_tokens=tokens_in,
                                  estimate_max_output_tokens=tokens_out, now=at)
            usage = Usage(input_tokens=tokens_in, output_tokens=tokens_out)
            seconds = rng.randint(2, 40)
        else:
            seconds = rng.randint(60, 900)
            hold = hold_authorize(api_key=key, model_id=model_id, request_id=request_id,
                                  estimate_seconds=Decimal(seconds), now=at)
            usage = Usage(inference_seconds=Decimal(seconds), load_seconds=Decimal(8))
    except ApplicationError as exc:
        if exc.code == "rate_limited":  # the free plan's closed-model requests per second
            time.sleep(1.05)
            return _run(key=key, model_id=model_id, request_id=request_id, at=at, rng=rng,
                        closed=closed)
        return
    hold_settle(hold_id=hold.hold_id, usage=usage, now=at + timedelta(seconds=seconds))


def _card_purchase(*, account_id, amount_nanos: int, at: datetime) -> Purchase | None:
    """Save the test card as the customer's browser would (Stripe.js confirms the
    SetupIntent with the publishable key) and buy credit with it."""
    setup = card_setup_start(account_id=account_id)
    requests.post(
        f"{settings.STRIPE_API_BASE.rstrip('/')}/v1/setup_intents/{setup.id}/confirm",
        data={"key": settings.STRIPE_PUBLISHABLE_KEY, "client_secret": setup.client_secret,
              "payment_method_data[type]": "card",
              "payment_method_data[card][number]": GOOD_CARD,
              "payment_method_data[card][exp_month]": "12",
              "payment_method_data[card][exp_year]": str(timezone.now().year + 3),
              "payment_method_data[card][cvc]": "123"}, timeout=10).raise_for_status()
    card = card_save(account_id=account_id, setup_intent_id=setup.id)
    payment, _, _ = purchase_start(account_id=account_id, amount_nanos=amount_nanos,
                                   card_id=card.id, client_key="demo-card-purchase", now=at)
    return payment.purchase


def demo_customer_seed(*, email: str, password: str,
                       now: datetime | None = None) -> tuple[DemoCustomer, str]:
    """The demo customer with a month of history (once), and a fresh inference key.
    Returns the customer and the key's secret."""
    now = now or timezone.now()
    start = now - timedelta(days=DAYS)
    account, created = account_create(email=email, now=start)
    user = account.user
    if not user.has_usable_password():
        user.set_password(password)
        user.save(update_fields=["password"])
    card_purchase = None
    if not Hold.objects.filter(account=account).exists():
        card_purchase = _history_seed(account=account, start=start, now=now)
    _, secret = api_key_create(account_id=account.id, name="demo")
    return DemoCustomer(account=account, created=created, card_purchase=card_purchase), secret


def _history_seed(*, account: Account, start: datetime, now: datetime) -> Purchase | None:
    rng = random.Random(20261121)
    keys = {}
    for name, age in (("production", DAYS), ("staging", 14)):
        _, secret = api_key_create(account_id=account.id, name=name,
                                         now=now - timedelta(days=age))
        keys[name] = secret
    # (days before now, what happens): purchases and grants, each with its own expiry.
    purchases = {
        23: ("DEMO-INVOICE-0001", 15 * USD),  # expires in 5 days: the overview warns
        12: ("DEMO-INVOICE-0002", 25 * USD),
    }
    open_models = ["Qwen/Qwen2.5-7B-Instruct", "meta-llama/Llama-3.1-8B-Instruct",
                   "meta-llama/Llama-3-70b"]
    closed_models = ["openai/gpt-4o", "anthropic/claude-sonnet-4"]
    card_purchase = None
    for days_ago in range(DAYS - 1, -1, -1):
        day = now - timedelta(days=days_ago)
        morning = day.replace(hour=9, minute=0, second=0, microsecond=0)
        if morning > now:
            morning = now - timedelta(hours=2)
        if days_ago in purchases:
            reference, amount = purchases[days_ago]
            purchase_record(account_id=account.id, amount_nanos=amount, reference=reference,
                            kind=Purchase.Kind.INVOICE, cash_book=Book.EXTERNAL_CASH,
                            now=morning - timedelta(hours=1))
        if days_ago == 4:
            credit_grant(account_id=account.id, amount_nanos=5 * USD,
                         reason="Welcome credit from the platform team",
                         source=CreditLot.Source.STAFF_GRANT, grant_key="demo-welcome",
                         now=morning - timedelta(hours=1))
        if days_ago == 2 and settings.STRIPE_API_BASE and settings.STRIPE_SECRET_KEY:
            card_purchase = _card_purchase(account_id=account.id, amount_nanos=20 * USD,
                                           at=morning - timedelta(hours=1))
        for run in range(rng.randint(3, 6)):
            closed = run % 3 == 2
            model_id = rng.choice(closed_models if closed else open_models)
            key = keys["staging"] if days_ago < 14 and run % 2 else keys["production"]
            _run(key=key, model_id=model_id, request_id=f"demo-{days_ago}-{run}",
                 at=morning + timedelta(minutes=47 * run), rng=rng, closed=closed)
    return card_purchase


def payg_price_configure(*, price_id: str) -> None:
    """Point the pay-as-you-go plan at its price (a staff edit in the admin otherwise)."""
    if price_id:
        Plan.objects.filter(code="payg", stripe_price_id="").update(stripe_price_id=price_id)
