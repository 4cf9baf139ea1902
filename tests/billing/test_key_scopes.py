"""Keys that run and keys that pay: every money call of /api/v1/ answers an inference key
(the key an app embeds) with 403 insufficient_scope and changes nothing, and works with a
management key; GET /api/v1/credits takes either."""

import pytest
from django.urls import URLPattern

from accounts.models import Account
from billing import customer_urls
from billing.models import BillingProfile, Card, CreditLot, Payment, Purchase, Subscription
from tests.billing.test_cards import CheckoutOnLocalstripe
from tests.support import assert_error

pytestmark = pytest.mark.usefixtures("stripe_live")

# Every route and method of the customer API's money calls, with a body that would spend
# or change something if it were let through. "{card}", "{payment}" and
# "{setup_intent}" are filled in from the world the test builds.
MONEY_CALLS = [
    ("post", "cards/setup-intents", None),
    ("get", "cards", None),
    ("post", "cards", {"setup_intent_id": "{setup_intent}"}),
    ("delete", "cards/<str:card_id>", None),
    ("post", "cards/<str:card_id>/default", None),
    ("get", "purchases", None),
    ("post", "purchases", {"amount_usd": "50.00"}),
    ("post", "purchases/checkout", {"amount_usd": "50.00",
                                    "success_url": "https://app.test/ok",
                                    "cancel_url": "https://app.test/cancel"}),
    ("post", "purchases/<str:payment_id>/confirm", None),
    ("get", "auto-reload", None),
    ("put", "auto-reload", {"enabled": True, "threshold_usd": "999999",
                            "amount_usd": "1000000", "monthly_max_usd": "1000000"}),
    ("get", "auto-scale", None),
    ("put", "auto-scale", {"max_monthly_spend_usd": "1000000"}),
    ("get", "subscription", None),
    ("post", "subscription", {"plan": "payg"}),
    ("delete", "subscription", {"at_period_end": False}),
]
CALL_IDS = [f"{method.upper()} {route}" for method, route, _ in MONEY_CALLS]


def test_the_list_of_money_calls_is_every_route_and_method_of_the_customer_api():
    served = set()
    for pattern in customer_urls.urlpatterns:
        assert isinstance(pattern, URLPattern)
        view = pattern.callback.view_class
        for method in ("get", "post", "put", "patch", "delete"):
            if hasattr(view, method):
                served.add((method, str(pattern.pattern)))
    assert served == {(method, route) for method, route, _ in MONEY_CALLS}


def _url(route: str, world: dict) -> str:
    path = (route.replace("<str:card_id>", world["card"])
            .replace("<str:payment_id>", world["payment"]))
    return f"/api/v1/{path}"


def _body(body, world: dict):
    if body is None:
        return None
    return {name: world["setup_intent"] if value == "{setup_intent}" else value
            for name, value in body.items()}


def _money_state(account_id) -> dict:
    """Everything a money call could change for the account."""
    return {
        "account": Account.objects.filter(id=account_id).values().get(),
        "profile": BillingProfile.objects.filter(account_id=account_id).values().get(),
        "cards": list(Card.objects.filter(account_id=account_id).order_by("id").values()),
        "payments": list(Payment.objects.filter(account_id=account_id).order_by("id")
                         .values()),
        "purchases": list(Purchase.objects.filter(account_id=account_id).order_by("id")
                          .values()),
        "lots": list(CreditLot.objects.filter(account_id=account_id).order_by("id").values()),
        "subscriptions": list(Subscription.objects.filter(account_id=account_id)
                              .order_by("id").values()),
    }


@pytest.fixture
def world(make_customer, save_card, localstripe_url, payg_price):
    """A customer set up with its management key: two saved cards, a purchase waiting for
    its confirmation, a confirmed SetupIntent not saved yet, auto-reload and auto-scale
    set, and a live subscription."""
    from tests.billing.conftest import browser_confirms_setup

    customer = make_customer()
    api = customer.api
    first = save_card(customer)
    assert first.status_code == 201, first.content
    second = save_card(customer, "5555555555554444")
    assert second.status_code == 201, second.content
    pending = api.post("/api/v1/purchases", {"amount_usd": "20.00", "confirm": False},
                       format="json")
    assert pending.status_code == 201, pending.content
    setup = api.post("/api/v1/cards/setup-intents")
    assert browser_confirms_setup(localstripe_url, setup.data["setup_intent_id"],
                                  setup.data["client_secret"], "4242424242424242").ok
    assert api.put("/api/v1/auto-reload", {"enabled": True, "threshold_usd": "3",
                                           "amount_usd": "10", "monthly_max_usd": "100"},
                   format="json").status_code == 200
    assert api.put("/api/v1/auto-scale", {"max_monthly_spend_usd": "40"},
                   format="json").status_code == 200
    assert api.post("/api/v1/subscription", {"plan": "payg"},
                    format="json").status_code == 201
    return {"customer": customer, "card": second.data["id"],
            "payment": pending.data["payment_id"],
            "setup_intent": setup.data["setup_intent_id"]}


@pytest.mark.parametrize(("method", "route", "body"), MONEY_CALLS, ids=CALL_IDS)
@pytest.mark.figure(12, tried="an inference key on every money call of /api/v1/",
                    counts="each 403 insufficient_scope, nothing changed")
def test_an_inference_key_is_refused_on_every_money_call_and_nothing_changes(
        world, settings, stripe_live, method, route, body):
    from rest_framework.test import APIClient

    customer = world["customer"]
    stripe_live.wait_quiet(since=0)  # the set-up's own webhooks have all landed
    before = _money_state(customer.id)
    # No Stripe call is needed to refuse: Stripe is out of reach from here on.
    settings.STRIPE_API_BASE = "http://127.0.0.1:9"
    app = APIClient()
    app.credentials(HTTP_AUTHORIZATION=f"Bearer {customer.key}")

    response = getattr(app, method)(_url(route, world), _body(body, world), format="json",
                                    HTTP_IDEMPOTENCY_KEY="app-1")

    body = assert_error(response, 403, "insufficient_scope")
    assert "management key" in body["message"]
    assert _money_state(customer.id) == before


def test_an_inference_key_without_the_bearer_word_is_refused_too(make_customer, save_card):
    from rest_framework.test import APIClient

    customer = make_customer()
    assert save_card(customer).status_code == 201
    app = APIClient()
    app.credentials(HTTP_AUTHORIZATION=customer.key)
    assert_error(app.post("/api/v1/purchases", {"amount_usd": "50.00"}, format="json"),
                 403, "insufficient_scope")
    assert not Payment.objects.filter(account_id=customer.id).exists()
    assert not Purchase.objects.filter(account_id=customer.id).exists()


def test_credits_are_read_with_either_kind_of_key(make_customer):
    from rest_framework.test import APIClient

    customer = make_customer()
    for key in (customer.key, customer.management_key):
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {key}")
        response = client.get("/api/v1/credits")
        assert response.status_code == 200, response.content
        assert response.data["balance_usd"] == "1.000000000"


def test_a_management_key_works_every_money_call(make_customer, save_card, localstripe_url,
                                                 settings, stripe_live, payg_price):
    """The same calls, in an order where each makes sense, with the management key."""
    from tests.billing.conftest import browser_confirms_setup

    settings.BILLING_STRIPE_GATEWAY = f"{CheckoutOnLocalstripe.__module__}.CheckoutOnLocalstripe"
    customer = make_customer()
    api = customer.api
    done = {}

    def call(method, route, body=None, *, url=None, expect):
        response = getattr(api, method)(url or f"/api/v1/{route}", body, format="json")
        assert response.status_code == expect, (method, route, response.content)
        done[(method, route)] = response
        return response

    setup = call("post", "cards/setup-intents", expect=201)
    assert browser_confirms_setup(localstripe_url, setup.data["setup_intent_id"],
                                  setup.data["client_secret"], "4242424242424242").ok
    card = call("post", "cards", {"setup_intent_id": setup.data["setup_intent_id"]},
                expect=201).data
    second = save_card(customer, "5555555555554444").data
    assert [c["id"] for c in call("get", "cards", expect=200).data] == [card["id"],
                                                                        second["id"]]
    call("post", "cards/<str:card_id>/default", url=f"/api/v1/cards/{second['id']}/default",
         expect=200)
    assert BillingProfile.objects.get(account_id=customer.id).default_card_id.hex == \
        second["id"].replace("-", "")
    bought = call("post", "purchases", {"amount_usd": "25.00"}, expect=201).data
    assert bought["status"] == "succeeded" and bought["purchase"]["amount_usd"] == \
        "25.000000000"
    pending = api.post("/api/v1/purchases", {"amount_usd": "10.00", "confirm": False},
                       format="json").data
    call("post", "purchases/<str:payment_id>/confirm",
         url=f"/api/v1/purchases/{pending['payment_id']}/confirm", expect=200)
    assert len(call("get", "purchases", expect=200).data) >= 1
    call("post", "purchases/checkout", {"amount_usd": "15.00",
                                        "success_url": "https://app.test/ok",
                                        "cancel_url": "https://app.test/cancel"}, expect=201)
    call("get", "auto-reload", expect=200)
    reload_ = call("put", "auto-reload", {"enabled": True, "threshold_usd": "3",
                                          "amount_usd": "12", "monthly_max_usd": "60"},
                   expect=200).data
    assert (reload_["enabled"], reload_["amount_usd"]) == (True, "12.000000000")
    call("get", "auto-scale", expect=200)
    assert call("put", "auto-scale", {"max_monthly_spend_usd": "40"}, expect=200).data[
        "max_monthly_spend_usd"] == "40.000000000"
    assert call("post", "subscription", {"plan": "payg"}, expect=201).data["plan"] == "payg"
    call("get", "subscription", expect=200)
    call("delete", "subscription", {"at_period_end": True}, expect=200)
    call("delete", "cards/<str:card_id>", url=f"/api/v1/cards/{card['id']}", expect=204)
    assert Card.objects.get(id=card["id"]).removed_at is not None

    assert set(done) == {(method, route) for method, route, _ in MONEY_CALLS}
