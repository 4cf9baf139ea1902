from django.core.management.base import BaseCommand, CommandError
from django.db import connection

from metering.selectors import books_discrepancies


class Command(BaseCommand):
    help = ("Verify the books: every ledger transaction balances, and for every account the "
            "ledger, its lots and the run path's working balance agree. Exits non-zero on "
            "any difference.")

    def handle(self, *args, **options):
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:  # a whole-ledger check outlasts a request
                cursor.execute("SET statement_timeout = 0")
        problems = books_discrepancies()
        for problem in problems:
            self.stderr.write(problem)
        if problems:
            raise CommandError(f"ledger_check: {len(problems)} discrepancies")
        self.stdout.write(self.style.SUCCESS("ledger_check: the books agree"))
