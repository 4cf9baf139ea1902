"""The provisioning calls of the internal API, each with a body the contract accepts, and
the world they act on: one account with a key, one model. Shared by the bad-input and the
authentication tests."""

from dataclasses import dataclass, field
from urllib.parse import quote

from django.forms.models import model_to_dict

from metering.models import InferenceModel
from tests.factories import AccountFactory, ApiKeyFactory, OpenModelFactory
from tests.support import BASE, account_state, db_counts


@dataclass(frozen=True)
class Raw:
    """A body sent as it is, not encoded as JSON."""

    text: str
    content_type: str = "application/json"


NO_BODY = object()


@dataclass
class World:
    account_id: str
    key_id: str
    model_id: str
    secret: str
    ids: dict = field(init=False)

    def __post_init__(self):
        self.ids = {"account": self.account_id, "key": self.key_id,
                    "model": quote(self.model_id, safe="/")}

    def snapshot(self) -> dict:
        """Everything a refused call must leave as it was."""
        return {
            "counts": db_counts(),
            "account": account_state(self.account_id),
            "models": [model_to_dict(m) for m in InferenceModel.objects.order_by("id")],
        }


def world_make() -> World:
    account = AccountFactory(email="world@example.com")
    api_key = ApiKeyFactory(account=account)
    model = OpenModelFactory(id="acme/existing-7b", params_b=7)
    return World(account_id=str(account.id), key_id=str(api_key.id), model_id=model.id,
                 secret=api_key.secret)


ACCOUNTS = f"{BASE}/accounts"
ACCOUNT = f"{BASE}/accounts/{{account}}"
PURCHASES = f"{BASE}/accounts/{{account}}/purchases"
KEYS = f"{BASE}/accounts/{{account}}/api-keys"
KEY = f"{BASE}/accounts/{{account}}/api-keys/{{key}}"
GRANTS = f"{BASE}/accounts/{{account}}/grants"
MODEL = f"{BASE}/models/{{model}}"

VALID_ACCOUNT = {"email": "new@example.com"}
VALID_PATCH = {"status": "suspended", "reason": "fraud review"}
VALID_PURCHASE = {"amount_usd": "25.00", "reference": "INV-2026-0042"}
VALID_KEY = {"name": "ci"}
VALID_GRANT = {"amount_usd": "5.00", "reason": "support credit"}
VALID_OPEN = {"kind": "open", "params_b": 70}
VALID_CLOSED = {"kind": "closed", "provider": "openai", "input_usd_per_mtok": "2.50",
                "output_usd_per_mtok": "10.00"}

# (name, method, path, valid body, status on success)
CALLS = [
    ("account-create", "post", ACCOUNTS, VALID_ACCOUNT, 201),
    ("account-read", "get", ACCOUNT, NO_BODY, 200),
    ("account-update", "patch", ACCOUNT, VALID_PATCH, 200),
    ("purchase-create", "post", PURCHASES, VALID_PURCHASE, 201),
    ("api-key-create", "post", KEYS, VALID_KEY, 201),
    ("api-key-revoke", "delete", KEY, NO_BODY, 204),
    ("grant-create", "post", GRANTS, VALID_GRANT, 201),
    ("model-put-open", "put", MODEL, VALID_OPEN, 200),
    ("model-put-closed", "put", MODEL, VALID_CLOSED, 200),
    ("model-read", "get", MODEL, NO_BODY, 200),
]


def send(client, method: str, path: str, body=NO_BODY, **headers):
    call = getattr(client, method)
    if body is NO_BODY:
        return call(path, **headers)
    if isinstance(body, Raw):
        return call(path, data=body.text, content_type=body.content_type, **headers)
    return call(path, body, format="json", **headers)
