"""Every provisioning call answers bad input with the contract's error and writes nothing:
no user, account, lot, purchase, ledger row, key or model appears, and the account, its
lots and keys and the catalog are exactly as they were."""

import uuid

import pytest

from tests.api.provisioning_calls import (
    ACCOUNT,
    ACCOUNTS,
    CALLS,
    GRANTS,
    KEY,
    KEYS,
    MODEL,
    NO_BODY,
    PURCHASES,
    VALID_ACCOUNT,
    VALID_CLOSED,
    VALID_GRANT,
    VALID_KEY,
    VALID_OPEN,
    VALID_PATCH,
    VALID_PURCHASE,
    Raw,
    send,
    world_make,
)
from tests.support import BASE, assert_error

pytestmark = pytest.mark.django_db


def changed(body: dict, **changes) -> dict:
    return {**body, **changes}


def without(body: dict, *names: str) -> dict:
    return {k: v for k, v in body.items() if k not in names}


MALFORMED_JSON = [
    Raw('{"email": '), Raw("{email: 1}"), Raw("{'a': 1}"), Raw('{"a": 1} trailing'),
    Raw('{"a": 1,}'), Raw('{"a": NaN}'), Raw("\x00"),
]
NOT_AN_OBJECT = [Raw("null"), Raw("[]"), Raw('["x"]'), Raw('"text"'), Raw("42"),
                 Raw("true")]

# Wrong JSON types, for any field.
WRONG_TYPES = [None, True, False, [], ["x"], {}, {"a": "b"}]
# Money: a decimal string in USD, exact, at most 9 places. Never a number.
MONEY_ILL_FORMED = [
    25, 25.0, 0.5, 10**20, "", " ", "abc", "1e3", "1E3", "$25", "25,00", "25 00", "+25",
    "0x19", "25USD", "NaN", "Infinity", "-", "1.2.3", "\u0661\u0660", "\uff12\uff15", "2⁵",
]
MONEY_NEGATIVE = ["-5", "-0.000000001", "-25.00"]
MONEY_ZERO = ["0", "0.00", "0.000000000", "000"]
MONEY_TOO_PRECISE = ["0.0000000001", "25.0000000001", "1.1234567891"]
MONEY_TOO_LARGE = ["1000000.000000001", "99999999999999999999"]
# A JSON string field: not a number, boolean, null, list or object; not blank.
STRING_WRONG = [5, 5.5, 0, *WRONG_TYPES, "", "   "]
TIME_WRONG = [5, 1767225600, True, [], {}, "", "tomorrow", "2030-13-01T00:00:00Z",
              "2030-01-01T25:00:00Z", "2020-01-01T00:00:00Z", "2000-01-01T00:00:00+02:00",
              "2030-01-01T00:00:00", "2030-01-01"]


def cases_for_money(path, valid, name, *, zero_ok=False):
    values = [*WRONG_TYPES, *MONEY_ILL_FORMED, *MONEY_NEGATIVE, *MONEY_TOO_PRECISE,
              *MONEY_TOO_LARGE, *([] if zero_ok else MONEY_ZERO)]
    return [(path, changed(valid, **{name: value}), 400, "invalid_request", (name,))
            for value in values]


def cases_for_string(path, valid, name, max_length):
    return [(path, changed(valid, **{name: value}), 400, "invalid_request", (name,))
            for value in [*STRING_WRONG, "x" * (max_length + 1)]]


def cases_for_body(path, valid, required):
    """Malformed or non-object bodies, and each required field left out."""
    return [
        *[(path, raw, 400, "invalid_request", ()) for raw in MALFORMED_JSON],
        *[(path, raw, 400, "invalid_request", ()) for raw in NOT_AN_OBJECT],
        (path, {}, 400, "invalid_request", required),
        (path, Raw(""), 400, "invalid_request", required),
        *[(path, without(valid, name), 400, "invalid_request", (name,)) for name in required],
    ]


UNKNOWN_ACCOUNT = str(uuid.UUID(int=1))
MALFORMED_IDS = ["not-a-uuid", "123", "00000000-0000-0000-0000-00000000000g",
                 f"{UNKNOWN_ACCOUNT}0", "%20", "null"]


def cases_for_account_id(method, path, valid):
    ids = [UNKNOWN_ACCOUNT, *MALFORMED_IDS]
    return [(method, path.replace("{account}", account_id), valid, 404, "account_not_found", ())
            for account_id in ids]


ACCOUNT_CREATE = [
    *cases_for_body(ACCOUNTS, VALID_ACCOUNT, ("email",)),
    *cases_for_string(ACCOUNTS, VALID_ACCOUNT, "email", 254),
    *[(ACCOUNTS, {"email": email}, 400, "invalid_request", ("email",))
      for email in ["not-an-email", "a@", "@example.com", "a b@example.com", "a@example..com",
                    "x" * 245 + "@example.com"]],
]

ACCOUNT_UPDATE = [
    *cases_for_body(ACCOUNT, VALID_PATCH, ("status",)),
    *[(ACCOUNT, changed(VALID_PATCH, status=value), 400, "invalid_request", ("status",))
      for value in [*WRONG_TYPES, 1, 0, "", "closed", "SUSPENDED", "deleted"]],
    *[(ACCOUNT, changed(VALID_PATCH, reason=value), 400, "invalid_request", ("reason",))
      for value in [5, 5.5, *WRONG_TYPES, "x" * 256]],
]

PURCHASE_CREATE = [
    *cases_for_body(PURCHASES, VALID_PURCHASE, ("amount_usd", "reference")),
    *cases_for_money(PURCHASES, VALID_PURCHASE, "amount_usd"),
    *cases_for_string(PURCHASES, VALID_PURCHASE, "reference", 255),
]

KEY_CREATE = [
    *cases_for_body(KEYS, VALID_KEY, ("name",)),
    *cases_for_string(KEYS, VALID_KEY, "name", 100),
    *[(KEYS, changed(VALID_KEY, expires_at=value), 400, "invalid_request", ("expires_at",))
      for value in TIME_WRONG if value is not None],
]

GRANT_CREATE = [
    *cases_for_body(GRANTS, VALID_GRANT, ("amount_usd", "reason")),
    *cases_for_money(GRANTS, VALID_GRANT, "amount_usd"),
    *cases_for_string(GRANTS, VALID_GRANT, "reason", 255),
    *[(GRANTS, changed(VALID_GRANT, expires_at=value), 400, "invalid_request", ("expires_at",))
      for value in TIME_WRONG],
]

MODEL_PUT = [
    *cases_for_body(MODEL, VALID_OPEN, ("kind",)),
    *[(MODEL, changed(VALID_OPEN, kind=value), 400, "invalid_request", ("kind",))
      for value in [*WRONG_TYPES, 1, "", "OPEN", "opensource", "closed-source"]],
    # Open models: a size, as a number of billions, within the largest class.
    (MODEL, {"kind": "open"}, 400, "invalid_request", ("params_b",)),
    *[(MODEL, changed(VALID_OPEN, params_b=value), 400, "invalid_request", ("params_b",))
      for value in [*WRONG_TYPES, "70", "70.5", "", "seventy", 0, 0.0, -7, 0.0001, 70.0001,
                    120.001, 121, 1e10, 10**12]],
    # Closed models: a provider and two prices, money strings (zero is a valid price).
    *[(MODEL, without(VALID_CLOSED, name), 400, "invalid_request", (name,))
      for name in ("provider", "input_usd_per_mtok", "output_usd_per_mtok")],
    *cases_for_string(MODEL, VALID_CLOSED, "provider", 50),
    *cases_for_money(MODEL, VALID_CLOSED, "input_usd_per_mtok", zero_ok=True),
    *cases_for_money(MODEL, VALID_CLOSED, "output_usd_per_mtok", zero_ok=True),
    (MODEL, changed(VALID_CLOSED, input_usd_per_mtok="100000.000000001"), 400,
     "invalid_request", ("input_usd_per_mtok",)),
    # Malformed model ids.
    *[(f"{BASE}/models/{model_id}", VALID_OPEN, 400, "invalid_request", ("model_id",))
      for model_id in ["-dash-first", "has%20space", "x" * 201, "caf%C3%A9", "semi;colon",
                       "/slash-first", "quote%22d",
                       # Dot and empty segments: stored, the model could never be
                       # addressed again.
                       "a/../../b", "a/./b", "a/..", "a/.", "a//b", "a/b/"]],
]

IDS = [
    *cases_for_account_id("get", ACCOUNT, NO_BODY),
    *cases_for_account_id("patch", ACCOUNT, VALID_PATCH),
    *cases_for_account_id("post", PURCHASES, VALID_PURCHASE),
    *cases_for_account_id("post", KEYS, VALID_KEY),
    *cases_for_account_id("post", GRANTS, VALID_GRANT),
    *cases_for_account_id("delete", KEY, NO_BODY),
    *[("delete", KEY.replace("{key}", key_id), NO_BODY, 404, "api_key_not_found", ())
      for key_id in [str(uuid.UUID(int=2)), *MALFORMED_IDS]],
    *[("get", f"{BASE}/models/{model_id}", NO_BODY, 404, "model_not_found", ())
      for model_id in ["acme/unknown", "acme/existing-7b/", "ACME/EXISTING-7B", "acme",
                       "x" * 300, "%20"]],
]


def params():
    for method, cases in [("post", ACCOUNT_CREATE), ("patch", ACCOUNT_UPDATE),
                          ("post", PURCHASE_CREATE), ("post", KEY_CREATE),
                          ("post", GRANT_CREATE), ("put", MODEL_PUT)]:
        for path, body, status, code, fields in cases:
            yield pytest.param(method, path, body, status, code, fields,
                               id=f"{method} {path.removeprefix(BASE)} {body!r:.60}")
    for method, path, body, status, code, fields in IDS:
        yield pytest.param(method, path, body, status, code, fields,
                           id=f"{method} {path.removeprefix(BASE):.60}")


@pytest.fixture
def world():
    return world_make()


@pytest.mark.parametrize(("method", "path", "body", "status", "code", "fields"), list(params()))
def test_bad_input_gets_the_contracts_error_and_writes_nothing(
        api, world, method, path, body, status, code, fields):
    before = world.snapshot()

    response = send(api, method, path.format(**world.ids), body)

    assert_error(response, status, code, fields=fields)
    assert world.snapshot() == before


@pytest.mark.parametrize(("name", "method", "path", "body", "status"),
                         [pytest.param(*call, id=call[0]) for call in CALLS])
def test_the_valid_bodies_the_bad_ones_are_made_from_are_accepted(
        api, world, name, method, path, body, status):
    response = send(api, method, path.format(**world.ids), body)
    assert response.status_code == status, response.content


def test_a_body_that_is_not_json_is_refused(api, world):
    before = world.snapshot()
    response = send(api, "post", GRANTS.format(**world.ids),
                    Raw("amount_usd=5&reason=x", "application/x-www-form-urlencoded"))
    assert_error(response, 400, "invalid_request", fields=("non_field_errors",))
    assert response.json()["message"].startswith("Malformed JSON")
    assert world.snapshot() == before


def test_a_json_body_under_another_content_type_is_read_as_json(api, world):
    # The contract's bodies are JSON; the run path reads them whatever the header says,
    # and so does provisioning (curl -d sends form-encoded by default).
    response = send(api, "post", GRANTS.format(**world.ids),
                    Raw('{"amount_usd": "5", "reason": "support"}',
                        "application/x-www-form-urlencoded"))
    assert response.status_code == 201, response.content


def test_an_unsupported_method_is_refused(api, world):
    before = world.snapshot()
    response = send(api, "post", ACCOUNT.format(**world.ids), VALID_PURCHASE)
    assert_error(response, 405, "method_not_allowed")
    assert world.snapshot() == before


@pytest.mark.parametrize("method", ["get", "put", "post", "delete"])
@pytest.mark.parametrize("path", ["nothing-here", "models/new%0Aline", "accounts%0A/x/y/z",
                                  "%0A", "accounts/x/purchases/extra"])
def test_an_unknown_path_is_not_found_in_json(api, world, method, path):
    before = world.snapshot()
    assert_error(send(api, method, f"{BASE}/{path}", VALID_OPEN), 404, "not_found")
    assert world.snapshot() == before
