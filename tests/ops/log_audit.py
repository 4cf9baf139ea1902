"""Reads the log of a whole test run and fails if a secret is in it: `make test` runs the
suite with LOG_FILE set (every process of the run appends its JSON lines there: the test
process, the live server, the production server and Celery workers the tests start), then

    python -m tests.ops.log_audit var/log/test-run.jsonl

It looks for the exact secrets the run used (service tokens, Stripe keys and signing
secrets, test card numbers) and for anything shaped like a customer API key, a Stripe
secret or a card number that was not redacted."""

import os
import re
import sys
from pathlib import Path

SHAPES = {
    "customer API key": re.compile(r"\bbk_[A-Za-z0-9]{8}_(?!\[redacted\])[A-Za-z0-9_-]{20,}"),
    "Stripe secret key": re.compile(r"\b(?:sk|rk)_(?:test|live)_(?!\[redacted\])[A-Za-z0-9]+"),
    "Stripe signing secret": re.compile(r"\bwhsec_(?!\[redacted\])[A-Za-z0-9+/=]+"),
    "bearer credential": re.compile(r"(?i)\bbearer\s+(?!\[redacted\])[A-Za-z0-9._~+/=-]{6,}"),
}


def secrets_of_the_run() -> dict[str, str]:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    import django

    django.setup()
    from tests.billing import conftest as billing
    from tests.conftest import INTERNAL_TOKEN
    from tests.ops import test_logs

    found = {"service token": INTERNAL_TOKEN, "second service token": "second-token",
             "Stripe secret key": billing.SECRET_KEY,
             "Stripe signing secret": billing.WEBHOOK_SECRET,
             "Stripe secret key (log test)": test_logs.STRIPE_SECRET,
             "Stripe signing secret (log test)": test_logs.WEBHOOK_SECRET}
    for name in ("GOOD_CARD", "DECLINED_ON_SAVE", "DECLINED_ON_CHARGE",
                 "NEEDS_AUTHENTICATION"):
        found[f"card number {name}"] = getattr(billing, name)
    return found


def audit(path: Path) -> list[str]:
    if not path.exists() or path.stat().st_size == 0:
        return [f"{path}: no log was written (was LOG_FILE set for the run?)"]
    secrets = secrets_of_the_run()
    problems = []
    with open(path, encoding="utf-8", errors="replace") as log:
        for number, line in enumerate(log, 1):
            for name, secret in secrets.items():
                if secret in line:
                    problems.append(f"{path}:{number}: {name} in the log")
            for name, shape in SHAPES.items():
                if shape.search(line):
                    problems.append(f"{path}:{number}: unredacted {name} in the log")
    return problems


def main(argv: list[str]) -> int:
    path = Path(argv[1] if len(argv) > 1 else "var/log/test-run.jsonl")
    problems = audit(path)
    if problems:
        print("Secrets found in the test run's log:", *problems[:50], sep="\n", file=sys.stderr)
        return 1
    with open(path, encoding="utf-8", errors="replace") as log:
        count = sum(1 for _ in log)
    print(f"log audit: {count} lines in {path}, no secret found")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
