"""`make run` on a machine without a Stripe account: run a command (the development
server) with payments pointed at a local Stripe stand-in.

Unless STRIPE_SECRET_KEY is set, this starts localstripe (a dev dependency) on a free
local port, gives the command test keys and STRIPE_API_BASE, registers the service's
webhook with localstripe (signed with a local signing secret, as the tests do), and
creates the pay-as-you-go plan's price there. localstripe keeps nothing between runs, so
the demo gets a fresh SQLite database to match (unless DATABASE_URL is set).

    python -m billing.devstripe --service-port 8000 -- sh -c '...runserver...'
"""

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

SECRET_KEY = "sk_test_localstripe_dev"
PUBLISHABLE_KEY = "pk_test_localstripe_dev"
WEBHOOK_SECRET = "whsec_localstripe_dev_signing_secret"
PAYG_PRICE_ID = "payg_local_demo"
# What the service subscribes to (README.md, "Payments").
WEBHOOK_EVENTS = [
    "payment_intent.succeeded", "payment_intent.payment_failed", "payment_intent.canceled",
    "setup_intent.succeeded", "invoice.paid", "invoice.payment_succeeded",
    "invoice.payment_failed", "customer.subscription.created",
    "customer.subscription.updated", "customer.subscription.deleted", "charge.refunded",
    "charge.dispute.created", "charge.dispute.closed",
]
BASE_DIR = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_up(url: str, process: subprocess.Popen, log_path: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            sys.exit(f"localstripe exited at start; see {log_path}")
        try:
            if requests.get(f"{url}/v1/customers", timeout=1,
                            headers={"Authorization": f"Bearer {SECRET_KEY}"}).ok:
                return
        except requests.ConnectionError:
            pass
        time.sleep(0.1)
    sys.exit(f"localstripe did not start within 30 s; see {log_path}")


def localstripe_start(*, service_port: int, var_dir: Path) -> tuple[subprocess.Popen, dict]:
    """Start localstripe and prepare it for the service; returns the process and the
    environment the service needs."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = var_dir / "localstripe.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "localstripe", "--port", str(port), "--from-scratch"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    _wait_up(url, process, log_path)
    requests.post(f"{url}/_config/webhooks/service", timeout=5, json={
        "url": f"http://127.0.0.1:{service_port}/stripe/webhook", "secret": WEBHOOK_SECRET,
        "events": WEBHOOK_EVENTS}).raise_for_status()
    # The pay-as-you-go plan's $3 monthly price (localstripe knows legacy plans, not prices).
    requests.post(f"{url}/v1/plans", timeout=5, auth=(SECRET_KEY, ""), data={
        "id": PAYG_PRICE_ID, "amount": 300, "currency": "usd", "interval": "month",
        "product[name]": "Pay-as-you-go"}).raise_for_status()
    env = {"STRIPE_API_BASE": url, "STRIPE_SECRET_KEY": SECRET_KEY,
           "STRIPE_PUBLISHABLE_KEY": PUBLISHABLE_KEY, "STRIPE_WEBHOOK_SECRET": WEBHOOK_SECRET,
           "DEMO_PAYG_STRIPE_PRICE_ID": PAYG_PRICE_ID}
    if not os.environ.get("DATABASE_URL"):
        database = var_dir / "demo-localstripe.sqlite3"
        for path in var_dir.glob("demo-localstripe.sqlite3*"):
            path.unlink()
        env["SQLITE_PATH"] = str(database)
    return process, env


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--service-port", type=int, default=8000)
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the command to run after --")
    if os.environ.get("STRIPE_SECRET_KEY"):
        os.execvp(command[0], command)  # real Stripe (or another endpoint) is configured
    var_dir = BASE_DIR / "var"
    var_dir.mkdir(exist_ok=True)
    process, env = localstripe_start(service_port=args.service_port, var_dir=var_dir)
    print(f"Payments: a local Stripe stand-in (localstripe) at {env['STRIPE_API_BASE']}; "
          "test card 4242 4242 4242 4242, any future expiry, any CVC. A fresh demo database "
          "each run (localstripe keeps nothing). Set STRIPE_SECRET_KEY to use Stripe.",
          flush=True)
    child = subprocess.Popen(command, env={**os.environ, **env})
    try:
        return child.wait()
    except KeyboardInterrupt:
        child.send_signal(signal.SIGINT)
        return child.wait()
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()


if __name__ == "__main__":
    sys.exit(main())
