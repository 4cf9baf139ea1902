"""Stripe test set-up: a real `localstripe` server started for the session, the service
pointed at it with STRIPE_API_BASE, and webhooks delivered by localstripe itself to the
running service (pytest-django's live server), signed with the test signing secret.

localstripe also delivers every event to a small recorder in this process, so tests can
wait for a delivery and replay its exact bytes."""

import json
import socket
import subprocess
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests
import stripe

from accounts.services import api_key_create
from billing.account_opening import account_create
from billing.models import Plan

WEBHOOK_SECRET = "whsec_test_localstripe_signing_secret"
SECRET_KEY = "sk_test_localstripe"
PUBLISHABLE_KEY = "pk_test_localstripe"
SERVICE_WEBHOOK_ID = "service"
# The events the service subscribes to (what Stripe's dashboard would be told).
SERVICE_EVENTS = [
    "payment_intent.succeeded", "payment_intent.payment_failed", "payment_intent.canceled",
    "setup_intent.succeeded", "invoice.paid", "invoice.payment_succeeded",
    "invoice.payment_failed", "customer.subscription.created",
    "customer.subscription.updated", "customer.subscription.deleted", "charge.refunded",
    "charge.dispute.created", "charge.dispute.closed",
]

GOOD_CARD = "4242424242424242"
DECLINED_ON_SAVE = "4000000000000002"  # localstripe: declined when attached (saved)
DECLINED_ON_CHARGE = "4000000000000341"  # saves, then every charge is declined
NEEDS_AUTHENTICATION = "4000002500003155"  # charges need 3-D Secure

# With localstripe, a webhook is sent one second after the event; this much silence means
# every delivery is done.
DELIVERY_QUIET_SECONDS = 1.6


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(predicate, *, timeout: float = 15.0, interval: float = 0.05, message=""):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting: {message or predicate}")
        time.sleep(interval)


@pytest.fixture(scope="session")
def localstripe_url(tmp_path_factory):
    port = _free_port()
    log_path = tmp_path_factory.mktemp("localstripe") / "localstripe.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "localstripe", "--port", str(port), "--from-scratch"],
            stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"

    def up():
        try:
            return requests.get(f"{url}/v1/customers", timeout=1,
                                headers={"Authorization": f"Bearer {SECRET_KEY}"}).ok
        except requests.ConnectionError:
            if process.poll() is not None:
                raise AssertionError(f"localstripe exited; see {log_path}") from None
            return False

    try:
        wait_until(up, timeout=30, message="localstripe to start")
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)


class DeliveryRecorder:
    """Receives every webhook localstripe sends (after the service got it)."""

    def __init__(self):
        self.deliveries: list[dict] = []
        self.last_at = time.monotonic()
        self.lock = threading.Lock()

    def record(self, body: bytes, signature: str):
        with self.lock:
            self.deliveries.append({"body": body, "signature": signature,
                                    "event": json.loads(body)})
            self.last_at = time.monotonic()

    def find(self, event_type: str, object_id: str):
        with self.lock:
            for delivery in self.deliveries:
                event = delivery["event"]
                if event["type"] == event_type and event["data"]["object"]["id"] == object_id:
                    return delivery
        return None

    def wait_for(self, event_type: str, object_id: str, timeout: float = 15.0) -> dict:
        return wait_until(lambda: self.find(event_type, object_id), timeout=timeout,
                          message=f"{event_type} for {object_id}")

    def wait_quiet(self, since: float):
        """Wait until localstripe has nothing left to deliver."""
        wait_until(lambda: time.monotonic() - max(self.last_at, since)
                   >= DELIVERY_QUIET_SECONDS, timeout=60, message="webhooks to drain")


@pytest.fixture(scope="session")
def delivery_recorder():
    recorder = DeliveryRecorder()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            recorder.record(body, self.headers.get("Stripe-Signature", ""))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    recorder.url = f"http://127.0.0.1:{server.server_address[1]}/"
    yield recorder
    server.shutdown()


def register_webhook(localstripe_url: str, webhook_id: str, url: str,
                     events: list[str] | None = None):
    data = {"url": url, "secret": WEBHOOK_SECRET}
    if events is not None:
        data["events"] = events
    requests.post(f"{localstripe_url}/_config/webhooks/{webhook_id}", json=data,
                  timeout=5).raise_for_status()


@pytest.fixture(scope="session")
def service_webhook_url(live_server):
    return f"http://127.0.0.1:{live_server.thread.port}/stripe/webhook"


@pytest.fixture(scope="session")
def _webhooks_registered(localstripe_url, service_webhook_url, delivery_recorder):
    # The service first: localstripe posts to its webhooks in turn, so by the time the
    # recorder has a delivery, the service has answered it.
    register_webhook(localstripe_url, SERVICE_WEBHOOK_ID, service_webhook_url, SERVICE_EVENTS)
    register_webhook(localstripe_url, "recorder", delivery_recorder.url)


@pytest.fixture
def stripe_live(settings, localstripe_url, _webhooks_registered, delivery_recorder,
                transactional_db, django_db_serialized_rollback):
    """The service on localstripe, with webhooks flowing. Waits at the end until every
    webhook the test caused has been delivered, so none lands in the next test."""
    settings.STRIPE_API_BASE = localstripe_url
    settings.STRIPE_SECRET_KEY = SECRET_KEY
    settings.STRIPE_PUBLISHABLE_KEY = PUBLISHABLE_KEY
    settings.STRIPE_WEBHOOK_SECRET = WEBHOOK_SECRET
    started = time.monotonic()
    yield delivery_recorder
    delivery_recorder.wait_quiet(since=started)


@pytest.fixture
def service_webhook_paused(localstripe_url, service_webhook_url, stripe_live):
    """localstripe stops delivering to the service (the recorder still gets everything),
    so the test decides when and how often the service receives an event."""
    register_webhook(localstripe_url, SERVICE_WEBHOOK_ID, service_webhook_url, ["none"])
    yield
    register_webhook(localstripe_url, SERVICE_WEBHOOK_ID, service_webhook_url, SERVICE_EVENTS)


@pytest.fixture
def stripe_client(localstripe_url):
    """Direct access to localstripe: what a browser (Stripe.js) or the Stripe dashboard
    would do, and reading what Stripe holds."""
    return stripe.StripeClient(SECRET_KEY, base_addresses={"api": localstripe_url},
                               max_network_retries=0)


# --- Customers ------------------------------------------------------------------------------


class Customer:
    """An account with an inference key (`key`, for runs) and a management key, and a
    client that calls /api/v1/ with the management key."""

    def __init__(self, account, key: str, management_key: str):
        from rest_framework.test import APIClient

        self.account = account
        self.key = key
        self.management_key = management_key
        self.api = APIClient()
        self.api.credentials(HTTP_AUTHORIZATION=f"Bearer {management_key}")

    @property
    def id(self):
        return self.account.id

    def refresh(self):
        self.account.refresh_from_db()
        return self.account


@pytest.fixture
def make_customer():
    def make(email: str | None = None) -> Customer:
        account, _ = account_create(email=email or f"{uuid.uuid4().hex[:12]}@example.com")
        _, key = api_key_create(account_id=account.id, name="test")
        _, management_key = api_key_create(account_id=account.id, name="test management",
                                           kind="management")
        return Customer(account, key, management_key)

    return make


def browser_confirms_setup(localstripe_url: str, setup_intent_id: str, client_secret: str,
                           number: str):
    """What Stripe.js does in the customer's browser: confirm the SetupIntent with the card
    typed in, using the publishable key; when the bank asks for 3-D Secure, the cardholder
    passes it (with localstripe, confirming again)."""
    url = f"{localstripe_url}/v1/setup_intents/{setup_intent_id}/confirm"
    response = requests.post(url, data={
        "key": PUBLISHABLE_KEY, "client_secret": client_secret,
        "payment_method_data[type]": "card", "payment_method_data[card][number]": number,
        "payment_method_data[card][exp_month]": "12",
        "payment_method_data[card][exp_year]": "2034",
        "payment_method_data[card][cvc]": "123"}, timeout=10)
    if response.ok and response.json()["status"] == "requires_action":
        response = requests.post(url, data={"key": PUBLISHABLE_KEY,
                                            "client_secret": client_secret}, timeout=10)
    return response


@pytest.fixture
def save_card(localstripe_url):
    """Save a card on the customer through the API, as the dashboard does: create a
    SetupIntent, confirm it in the "browser", then save it. Returns the API response."""

    def save(customer: Customer, number: str = GOOD_CARD):
        setup = customer.api.post("/api/v1/cards/setup-intents")
        assert setup.status_code == 201, setup.content
        confirmed = browser_confirms_setup(localstripe_url, setup.data["setup_intent_id"],
                                           setup.data["client_secret"], number)
        response = customer.api.post("/api/v1/cards",
                                     {"setup_intent_id": setup.data["setup_intent_id"]},
                                     format="json")
        response.browser_status = confirmed.status_code
        return response

    return save


def signed(payload: bytes | str, *, secret: str = WEBHOOK_SECRET,
           timestamp: int | None = None) -> str:
    text = payload.decode() if isinstance(payload, bytes) else payload
    return stripe.WebhookSignature.generate_signature_header(text, secret, timestamp)


def event_payload(event_type: str, obj: dict, *, event_id: str | None = None,
                  created: int | None = None) -> bytes:
    """A Stripe event as Stripe sends it, for the event types localstripe never sends."""
    return json.dumps({
        "id": event_id or f"evt_test_{uuid.uuid4().hex[:16]}", "object": "event",
        "type": event_type, "created": created or int(time.time()),
        "api_version": "2026-10-28", "livemode": False, "data": {"object": obj},
    }).encode()


def deliver(url: str, body: bytes, signature: str | None = None):
    """POST a webhook delivery to the running service, as Stripe does."""
    headers = {"Content-Type": "application/json; charset=utf-8"}
    headers["Stripe-Signature"] = signed(body) if signature is None else signature
    return requests.post(url, data=body, headers=headers, timeout=30)


@pytest.fixture
def payg_price(stripe_client):
    """The pay-as-you-go plan's price at Stripe (a localstripe legacy plan stands in)."""
    price_id = f"payg_{uuid.uuid4().hex[:10]}"
    stripe_client.v1.plans.create(params={"id": price_id, "amount": 300, "currency": "usd",
                                          "interval": "month",
                                          "product": {"name": "Pay-as-you-go"}})
    Plan.objects.filter(code="payg").update(stripe_price_id=price_id)
    return price_id


def subscription_made_at_stripe(customer, save_card, stripe_client, price_id):
    """A subscription made at Stripe (localstripe pays its first invoice at once) that the
    service has heard nothing about yet."""
    assert save_card(customer).status_code == 201
    customer_id = customer.refresh().billing_profile.stripe_customer_id
    return stripe_client.v1.subscriptions.create(params={
        "customer": customer_id, "items": [{"plan": price_id}],
        "metadata": {"account_id": str(customer.id), "plan_code": "payg"}})
