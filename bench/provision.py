"""Sets up the benchmark's customers through the internal API, as the platform would:
an account, a large purchase that unlocks the top tier, an API key and an open 7B model.
Also asks whether this build serves the run path at all."""

import http.client
import json
from dataclasses import dataclass

BENCH_MODEL = "bench/open-7b"  # an open model in the smallest size class: 1 slot a run
PURCHASE_USD = "1000.00"       # unlocks the $1,000 tier: 400 concurrent slots
# The key of the "key with a spend limit" steps: a monthly limit far above what a run
# spends, so that every authorize pays for the limit's check and none is refused by it.
KEY_SPEND_LIMIT_USD = "100000.00"


class ProvisionError(RuntimeError):
    pass


class InternalClient:
    def __init__(self, port: int, token: str):
        self.port = port
        self.token = token

    def call(self, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        headers = {"Authorization": f"Bearer {self.token}"}
        payload = None
        if body is not None:
            payload = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        try:
            conn.request(method, path, body=payload, headers=headers)
            response = conn.getresponse()
            raw = response.read()
        finally:
            conn.close()
        try:
            data = json.loads(raw) if raw else {}
        except ValueError:
            data = {"raw": raw[:200].decode(errors="replace")}
        return response.status, data

    def text(self, path: str) -> str:
        """GET a text page (the metrics) with the token."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.request("GET", path, headers={"Authorization": f"Bearer {self.token}"})
            return conn.getresponse().read().decode(errors="replace")
        finally:
            conn.close()

    def expect(self, method: str, path: str, body: dict | None, statuses: tuple[int, ...]):
        status, data = self.call(method, path, body)
        if status not in statuses:
            raise ProvisionError(f"{method} {path} answered {status}: {data}")
        return data


@dataclass(frozen=True)
class BenchAccount:
    account_id: str
    api_key: str
    tier_concurrency: int
    available_usd: str


def model_ensure(client: InternalClient) -> None:
    client.expect("PUT", f"/internal/v1/models/{BENCH_MODEL}",
                  {"kind": "open", "params_b": 7}, (200,))


def account_provision(client: InternalClient, *, tag: str,
                      spend_limit_usd: str | None = None) -> BenchAccount:
    account = client.expect("POST", "/internal/v1/accounts",
                            {"email": f"bench-{tag}@example.com"}, (200, 201))
    account_id = account["account_id"]
    client.expect("POST", f"/internal/v1/accounts/{account_id}/purchases",
                  {"amount_usd": PURCHASE_USD, "reference": f"bench-{tag}"}, (200, 201))
    key_body = {"name": f"bench {tag}"}
    if spend_limit_usd is not None:
        key_body.update(spend_limit_usd=spend_limit_usd, spend_limit_period="month")
    key = client.expect("POST", f"/internal/v1/accounts/{account_id}/api-keys", key_body,
                        (201,))
    detail = client.expect("GET", f"/internal/v1/accounts/{account_id}", None, (200,))
    return BenchAccount(account_id=account_id, api_key=key["key"],
                        tier_concurrency=detail["tier"]["concurrency"],
                        available_usd=detail["available_usd"])


def run_path_probe(client: InternalClient, account: BenchAccount, *, tag: str) -> str | None:
    """None when authorize and settle answer as the contract says; otherwise why not."""
    status, body = client.call("POST", "/internal/v1/authorize", {
        "api_key": account.api_key, "model": BENCH_MODEL, "request_id": f"{tag}-probe",
        "byok": False, "auto_scale": False, "estimate": {"seconds": 30}})
    if status in (403, 404) and "code" not in body:
        # No such view: the catch-all 404, or CSRF protection refusing a POST to it.
        return f"this build has no run path (POST /internal/v1/authorize answers {status})"
    if status == 404 and body.get("code") == "not_found":
        return "this build has no run path (POST /internal/v1/authorize answers 404)"
    if status != 200 or "hold_id" not in body:
        return f"authorize probe answered {status}: {body}"
    status, body = client.call("POST", f"/internal/v1/holds/{body['hold_id']}/settle",
                               {"inference_seconds": 1, "load_seconds": 0})
    if status != 200:
        return f"settle probe answered {status}: {body}"
    return None
