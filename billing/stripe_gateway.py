"""The Stripe boundary: the few Stripe calls the service makes, behind one small interface.

Services never touch the `stripe` library. They call a `StripeGateway` and get back plain,
frozen data (`IntentState`, `CardDetails`, ...), parsed by the same functions whether it
came from an API response or from a webhook payload. Amounts here are in cents; the
services convert at this boundary only.

Every charge the service starts carries its own idempotency key (the caller's), so a
retried decision never charges twice. Card declines and authentication failures raise
`CardDeclined`; Stripe being unreachable raises `StripeUnavailable` (safe to retry with
the same key); anything else Stripe refuses raises `StripeRequestFailed`.

Checkout Sessions and Prices are used only through `checkout_session_create` and
`subscription_create`: the local test server has neither, so they stay behind this
interface.
"""

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

import stripe
from django.conf import settings
from django.utils.module_loading import import_string

CURRENCY = "usd"


class StripeGatewayError(Exception):
    pass


class StripeNotConfigured(StripeGatewayError):
    pass


class StripeUnavailable(StripeGatewayError):
    """Stripe could not be reached or failed on its side: retry with the same key."""


class StripeRequestFailed(StripeGatewayError):
    """Stripe refused the request (a bad id, a state that does not allow it)."""


class StripeObjectMissing(StripeRequestFailed):
    """Stripe does not know the object (404): asking again will not change that."""


class CardDeclined(StripeGatewayError):
    """The card was declined or needs the customer to authenticate."""

    def __init__(self, code: str, message: str, payment_intent_id: str | None = None):
        super().__init__(message)
        self.code = code or "card_declined"
        self.message = message or "The card was declined."
        self.payment_intent_id = payment_intent_id


# --- Parsed Stripe objects ---------------------------------------------------------------


def _id(value) -> str | None:
    """An expandable field: an id, or the expanded object carrying it."""
    if value is None or isinstance(value, str):
        return value or None
    return value.get("id")


def _timestamp(value) -> datetime | None:
    return datetime.fromtimestamp(int(value), tz=UTC) if value else None


@dataclass(frozen=True, slots=True)
class IntentState:
    id: str
    status: str
    amount_cents: int
    amount_received_cents: int
    currency: str
    customer_id: str | None
    payment_method_id: str | None
    charge_id: str | None
    receipt_url: str
    client_secret: str
    failure_code: str
    failure_message: str
    next_action_type: str
    metadata: dict = field(default_factory=dict)

    @classmethod
    def parse(cls, obj: Mapping) -> "IntentState":
        charge = obj.get("latest_charge")
        error = obj.get("last_payment_error") or {}
        next_action = obj.get("next_action") or {}
        amount = int(obj.get("amount") or 0)
        received = obj.get("amount_received")
        if received is None:
            received = amount if obj.get("status") == "succeeded" else 0
        return cls(
            id=obj["id"], status=obj.get("status") or "", amount_cents=amount,
            amount_received_cents=int(received), currency=(obj.get("currency") or "").lower(),
            customer_id=_id(obj.get("customer")),
            payment_method_id=_id(obj.get("payment_method")),
            charge_id=_id(charge),
            receipt_url=(charge.get("receipt_url") or "") if isinstance(charge, Mapping) else "",
            client_secret=obj.get("client_secret") or "",
            failure_code=error.get("decline_code") or error.get("code") or "",
            failure_message=error.get("message") or "",
            next_action_type=next_action.get("type") or "",
            metadata=dict(obj.get("metadata") or {}),
        )


@dataclass(frozen=True, slots=True)
class SetupIntentState:
    id: str
    status: str
    customer_id: str | None
    payment_method_id: str | None
    client_secret: str
    metadata: dict = field(default_factory=dict)

    @classmethod
    def parse(cls, obj: Mapping) -> "SetupIntentState":
        return cls(id=obj["id"], status=obj.get("status") or "",
                   customer_id=_id(obj.get("customer")),
                   payment_method_id=_id(obj.get("payment_method")),
                   client_secret=obj.get("client_secret") or "",
                   metadata=dict(obj.get("metadata") or {}))


@dataclass(frozen=True, slots=True)
class CardDetails:
    payment_method_id: str
    customer_id: str | None
    brand: str
    last4: str
    exp_month: int | None
    exp_year: int | None

    @classmethod
    def parse(cls, obj: Mapping) -> "CardDetails":
        card = obj.get("card") or {}
        return cls(payment_method_id=obj["id"], customer_id=_id(obj.get("customer")),
                   brand=card.get("brand") or "", last4=card.get("last4") or "",
                   exp_month=card.get("exp_month"), exp_year=card.get("exp_year"))


@dataclass(frozen=True, slots=True)
class RefundState:
    id: str
    status: str
    amount_cents: int
    charge_id: str | None
    payment_intent_id: str | None

    @classmethod
    def parse(cls, obj: Mapping) -> "RefundState":
        return cls(id=obj["id"], status=obj.get("status") or "",
                   amount_cents=int(obj.get("amount") or 0), charge_id=_id(obj.get("charge")),
                   payment_intent_id=_id(obj.get("payment_intent")))


@dataclass(frozen=True, slots=True)
class ChargeState:
    id: str
    payment_intent_id: str | None
    customer_id: str | None
    amount_cents: int
    amount_refunded_cents: int
    # None: the payload did not list the refunds (newer API versions leave them out).
    refunds: tuple[RefundState, ...] | None

    @classmethod
    def parse(cls, obj: Mapping) -> "ChargeState":
        refunds = obj.get("refunds")
        listed = None
        if isinstance(refunds, Mapping) and "data" in refunds and not refunds.get("has_more"):
            listed = tuple(RefundState.parse(r) for r in refunds["data"])
        return cls(id=obj["id"], payment_intent_id=_id(obj.get("payment_intent")),
                   customer_id=_id(obj.get("customer")), amount_cents=int(obj.get("amount") or 0),
                   amount_refunded_cents=int(obj.get("amount_refunded") or 0), refunds=listed)


@dataclass(frozen=True, slots=True)
class DisputeState:
    id: str
    status: str
    reason: str
    amount_cents: int
    charge_id: str | None
    payment_intent_id: str | None

    @classmethod
    def parse(cls, obj: Mapping) -> "DisputeState":
        return cls(id=obj["id"], status=obj.get("status") or "", reason=obj.get("reason") or "",
                   amount_cents=int(obj.get("amount") or 0), charge_id=_id(obj.get("charge")),
                   payment_intent_id=_id(obj.get("payment_intent")))


@dataclass(frozen=True, slots=True)
class SubscriptionState:
    id: str
    customer_id: str | None
    status: str
    cancel_at_period_end: bool
    current_period_end: datetime | None
    latest_invoice_id: str | None
    price_ids: tuple[str, ...]
    metadata: dict = field(default_factory=dict)

    @classmethod
    def parse(cls, obj: Mapping) -> "SubscriptionState":
        items = (obj.get("items") or {}).get("data") or []
        price_ids = []
        period_end = obj.get("current_period_end")
        for item in items:
            for key in ("price", "plan"):
                price_id = _id(item.get(key))
                if price_id:
                    price_ids.append(price_id)
            period_end = period_end or item.get("current_period_end")
        return cls(id=obj["id"], customer_id=_id(obj.get("customer")),
                   status=obj.get("status") or "",
                   cancel_at_period_end=bool(obj.get("cancel_at_period_end")),
                   current_period_end=_timestamp(period_end),
                   latest_invoice_id=_id(obj.get("latest_invoice")),
                   price_ids=tuple(price_ids), metadata=dict(obj.get("metadata") or {}))


@dataclass(frozen=True, slots=True)
class InvoiceState:
    id: str
    customer_id: str | None
    subscription_id: str | None
    status: str
    amount_paid_cents: int
    currency: str
    payment_intent_id: str | None
    subscription_metadata: dict = field(default_factory=dict)

    @classmethod
    def parse(cls, obj: Mapping) -> "InvoiceState":
        details = ((obj.get("parent") or {}).get("subscription_details")) or {}
        subscription_id = _id(obj.get("subscription")) or _id(details.get("subscription"))
        payment_intent_id = _id(obj.get("payment_intent"))
        if payment_intent_id is None:
            for invoice_payment in (obj.get("payments") or {}).get("data") or []:
                payment_intent_id = _id((invoice_payment.get("payment") or {})
                                        .get("payment_intent"))
                if payment_intent_id:
                    break
        return cls(id=obj["id"], customer_id=_id(obj.get("customer")),
                   subscription_id=subscription_id, status=obj.get("status") or "",
                   amount_paid_cents=int(obj.get("amount_paid") or 0),
                   currency=(obj.get("currency") or "").lower(),
                   payment_intent_id=payment_intent_id,
                   subscription_metadata=dict(details.get("metadata") or {}))


@dataclass(frozen=True, slots=True)
class CheckoutSessionState:
    id: str
    url: str
    status: str
    payment_status: str
    payment_intent_id: str | None
    amount_total_cents: int
    metadata: dict = field(default_factory=dict)

    @classmethod
    def parse(cls, obj: Mapping) -> "CheckoutSessionState":
        return cls(id=obj["id"], url=obj.get("url") or "", status=obj.get("status") or "",
                   payment_status=obj.get("payment_status") or "",
                   payment_intent_id=_id(obj.get("payment_intent")),
                   amount_total_cents=int(obj.get("amount_total") or 0),
                   metadata=dict(obj.get("metadata") or {}))


# --- The gateway ---------------------------------------------------------------------------


def _plain(obj: Any) -> dict:
    return obj.to_dict() if hasattr(obj, "to_dict") else dict(obj)


class StripeGateway:
    """The Stripe calls the service makes, on the official client."""

    def __init__(self, *, api_key: str, api_base: str = "", max_network_retries: int = 2,
                 timeout_seconds: int = 30):
        if not api_key:
            raise StripeNotConfigured("STRIPE_SECRET_KEY is not set")
        base_addresses = {"api": api_base.rstrip("/")} if api_base else None
        self.client = stripe.StripeClient(
            api_key, base_addresses=base_addresses, max_network_retries=max_network_retries,
            http_client=stripe.RequestsClient(timeout=timeout_seconds))

    def _call(self, method, *args, **kwargs):
        try:
            return _plain(method(*args, **kwargs))
        except stripe.CardError as exc:
            error = exc.error
            intent = getattr(error, "payment_intent", None) if error else None
            raise CardDeclined(
                code=(getattr(error, "decline_code", None) or exc.code or "card_declined"),
                message=exc.user_message or str(exc), payment_intent_id=_id(intent),
            ) from exc
        except (stripe.APIConnectionError, stripe.RateLimitError) as exc:
            raise StripeUnavailable(str(exc)) from exc
        except stripe.IdempotencyError as exc:
            # Another call with the same idempotency key is still in progress at Stripe
            # (409): not a refusal; its outcome is learnt by retrying with the same key.
            raise StripeUnavailable(str(exc)) from exc
        except stripe.StripeError as exc:
            if exc.http_status is None or exc.http_status >= 500:
                raise StripeUnavailable(str(exc)) from exc
            if exc.http_status == 404:
                raise StripeObjectMissing(exc.user_message or str(exc)) from exc
            raise StripeRequestFailed(exc.user_message or str(exc)) from exc

    # Customers and cards

    def customer_create(self, *, email: str, metadata: dict, idempotency_key: str) -> str:
        obj = self._call(self.client.v1.customers.create,
                         params={"email": email, "metadata": metadata},
                         options={"idempotency_key": idempotency_key})
        return obj["id"]

    def customer_default_payment_method_set(self, *, customer_id: str,
                                            payment_method_id: str | None) -> None:
        self._call(self.client.v1.customers.update, customer_id, params={
            "invoice_settings": {"default_payment_method": payment_method_id or ""}})

    def setup_intent_create(self, *, customer_id: str, metadata: dict,
                            idempotency_key: str) -> SetupIntentState:
        obj = self._call(self.client.v1.setup_intents.create, params={
            "customer": customer_id, "usage": "off_session", "payment_method_types": ["card"],
            "metadata": metadata}, options={"idempotency_key": idempotency_key})
        return SetupIntentState.parse(obj)

    def setup_intent_retrieve(self, setup_intent_id: str) -> SetupIntentState:
        return SetupIntentState.parse(
            self._call(self.client.v1.setup_intents.retrieve, setup_intent_id))

    def payment_method_retrieve(self, payment_method_id: str) -> CardDetails:
        return CardDetails.parse(
            self._call(self.client.v1.payment_methods.retrieve, payment_method_id))

    def payment_method_attach(self, *, payment_method_id: str, customer_id: str) -> CardDetails:
        return CardDetails.parse(self._call(self.client.v1.payment_methods.attach,
                                            payment_method_id, params={"customer": customer_id}))

    def payment_method_detach(self, payment_method_id: str) -> None:
        self._call(self.client.v1.payment_methods.detach, payment_method_id)

    # Payments

    def payment_intent_create(self, *, amount_cents: int, customer_id: str,
                              payment_method_id: str | None, metadata: dict,
                              idempotency_key: str, confirm: bool = False,
                              off_session: bool = False) -> IntentState:
        params: dict[str, Any] = {
            "amount": amount_cents, "currency": CURRENCY, "customer": customer_id,
            "payment_method_types": ["card"], "metadata": metadata,
        }
        if payment_method_id:
            params["payment_method"] = payment_method_id
        if confirm:
            params["confirm"] = True
            if off_session:
                params["off_session"] = True
        return IntentState.parse(self._call(self.client.v1.payment_intents.create,
                                            params=params,
                                            options={"idempotency_key": idempotency_key}))

    def payment_intent_confirm(self, payment_intent_id: str, *,
                               idempotency_key: str) -> IntentState:
        return IntentState.parse(self._call(self.client.v1.payment_intents.confirm,
                                            payment_intent_id,
                                            options={"idempotency_key": idempotency_key}))

    def payment_intent_retrieve(self, payment_intent_id: str) -> IntentState:
        return IntentState.parse(self._call(self.client.v1.payment_intents.retrieve,
                                            payment_intent_id,
                                            params={"expand": ["latest_charge"]}))

    def payment_intent_cancel(self, payment_intent_id: str) -> IntentState:
        return IntentState.parse(self._call(self.client.v1.payment_intents.cancel,
                                            payment_intent_id))

    def checkout_session_create(self, *, amount_cents: int, customer_id: str,
                                success_url: str, cancel_url: str, metadata: dict,
                                idempotency_key: str) -> CheckoutSessionState:
        obj = self._call(self.client.v1.checkout.sessions.create, params={
            "mode": "payment", "customer": customer_id, "success_url": success_url,
            "cancel_url": cancel_url, "metadata": metadata,
            "payment_intent_data": {"metadata": metadata},
            "line_items": [{"quantity": 1, "price_data": {
                "currency": CURRENCY, "unit_amount": amount_cents,
                "product_data": {"name": "Credits"}}}],
        }, options={"idempotency_key": idempotency_key})
        return CheckoutSessionState.parse(obj)

    # Refunds and charges

    def refund_create(self, *, payment_intent_id: str, amount_cents: int, metadata: dict,
                      idempotency_key: str) -> RefundState:
        return RefundState.parse(self._call(self.client.v1.refunds.create, params={
            "payment_intent": payment_intent_id, "amount": amount_cents, "metadata": metadata,
        }, options={"idempotency_key": idempotency_key}))

    def refunds_for_charge(self, charge_id: str) -> list[RefundState]:
        obj = self._call(self.client.v1.refunds.list, params={"charge": charge_id, "limit": 100})
        return [RefundState.parse(r) for r in obj.get("data") or []]

    def charge_retrieve(self, charge_id: str) -> ChargeState:
        return ChargeState.parse(self._call(self.client.v1.charges.retrieve, charge_id))

    # Subscriptions

    def subscription_create(self, *, customer_id: str, price_id: str, metadata: dict,
                            idempotency_key: str) -> SubscriptionState:
        # Legacy plan ids (what the local test server knows) go in `plan`; prices in `price`.
        item_key = "price" if price_id.startswith("price_") else "plan"
        obj = self._call(self.client.v1.subscriptions.create, params={
            "customer": customer_id, "items": [{item_key: price_id}], "metadata": metadata,
        }, options={"idempotency_key": idempotency_key})
        return SubscriptionState.parse(obj)

    def subscription_retrieve(self, subscription_id: str) -> SubscriptionState:
        return SubscriptionState.parse(
            self._call(self.client.v1.subscriptions.retrieve, subscription_id))

    def subscription_cancel(self, subscription_id: str, *,
                            at_period_end: bool) -> SubscriptionState:
        if at_period_end:
            obj = self._call(self.client.v1.subscriptions.update, subscription_id,
                             params={"cancel_at_period_end": True})
        else:
            obj = self._call(self.client.v1.subscriptions.cancel, subscription_id)
        return SubscriptionState.parse(obj)

    def invoice_retrieve(self, invoice_id: str) -> InvoiceState:
        # Since API version 2025-03-31 the invoice names its PaymentIntent only in its
        # `payments`, which are sent only when asked for. Servers on older versions (and
        # Stripe-compatible test servers) have none to expand and name it on the invoice.
        try:
            return InvoiceState.parse(self._call(self.client.v1.invoices.retrieve, invoice_id,
                                                 params={"expand": ["payments"]}))
        except StripeRequestFailed as exc:
            if "expand" not in str(exc).lower():
                raise
        return InvoiceState.parse(self._call(self.client.v1.invoices.retrieve, invoice_id))


@lru_cache(maxsize=4)
def _gateway(class_path: str, api_key: str, api_base: str) -> StripeGateway:
    return import_string(class_path)(api_key=api_key, api_base=api_base)


def stripe_gateway() -> StripeGateway:
    """The configured gateway (one per process and configuration)."""
    return _gateway(settings.BILLING_STRIPE_GATEWAY, settings.STRIPE_SECRET_KEY,
                    settings.STRIPE_API_BASE)
