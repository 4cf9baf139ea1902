import time

from django.core.management.base import BaseCommand, CommandError
from django.db import connection
from django.utils import timezone

from billing.ledger_check import LedgerCheckBusy, ledger_check_run
from metering.selectors import hold_discrepancies, key_spend_discrepancies


class Command(BaseCommand):
    help = ("Verify the books: every ledger transaction balances, and for every account the "
            "ledger, its lots and the run path's working balance agree. Reads the ledger "
            "from its last checkpoint (what was posted since the last check that passed); "
            "--full reads all of it. Exits non-zero on any difference.")

    def add_arguments(self, parser):
        parser.add_argument("--full", action="store_true",
                            help="verify the whole ledger, not only what was posted since "
                                 "the checkpoint (and rebuild the checkpoint)")
        parser.add_argument("--in-flight-wait", type=float, default=10.0, metavar="SECONDS",
                            help="how long to wait for transactions open when the check "
                                 "starts before checking without moving the checkpoint "
                                 "(default 10)")

    def handle(self, *args, **options):
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:  # a whole-ledger check outlasts a request
                cursor.execute("SET statement_timeout = 0")
        started = time.monotonic()
        try:
            ledger = ledger_check_run(full=options["full"], now=timezone.now(),
                                      in_flight_wait_s=options["in_flight_wait"])
        except LedgerCheckBusy as exc:
            raise CommandError(f"ledger_check: {exc}") from exc
        problems = [*ledger.problems, *hold_discrepancies(), *key_spend_discrepancies()]
        seconds = time.monotonic() - started
        self.stdout.write(
            f"ledger_check: {ledger.mode} ({ledger.reason}); "
            + (f"{ledger.transactions_checked} transactions, " if ledger.mode != "full" else "")
            + f"{ledger.entries_read} customer-book entries read; {seconds:.2f} s")
        for note in ledger.notes:
            self.stdout.write(f"ledger_check: {note}")
        for problem in problems:
            self.stderr.write(problem)
        if problems:
            raise CommandError(f"ledger_check: {len(problems)} discrepancies")
        if ledger.checkpoint_after is not None:
            self.stdout.write(f"ledger_check: checkpoint at transaction {ledger.checkpoint_after}")
        self.stdout.write(self.style.SUCCESS("ledger_check: the books agree"))
