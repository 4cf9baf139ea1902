"""The database functions the run path calls are created by migrations from the text in
metering's *_sql.py modules. A migration runs once: a change to that text (or to a
statement it is built from, such as metering/sql.py's AUTHORIZE_PG) needs a new
migration that creates the function again, or a database migrated before the change
keeps the old function while the code and its tests (on a fresh database, which takes
today's text) describe the new one. Each creating migration names the bodies it created
(CREATES: a fingerprint per function); the latest one for each function must match the
code's text today."""

import hashlib
import importlib
import re
from pathlib import Path

import pytest
from django.db import connection

from metering import group_commit_sql, pricing_sql, settle_sql

FUNCTION_RE = re.compile(
    r"CREATE OR REPLACE FUNCTION (?P<name>\w+)\((?P<args>.*?)\)\s.*?AS \$(?P<tag>\w*)\$"
    r"(?P<body>.*?)\$(?P=tag)\$", re.DOTALL)


def functions_in_code() -> dict[str, str]:
    texts = [value for module in (settle_sql, group_commit_sql, pricing_sql)
             for value in vars(module).values()
             if isinstance(value, str) and "CREATE OR REPLACE FUNCTION" in value]
    functions = {}
    for text in texts:
        for match in FUNCTION_RE.finditer(text):
            assert match["name"] not in functions, f"{match['name']} is defined twice"
            functions[match["name"]] = match["body"]
    return functions


def fingerprint(body: str) -> str:
    return hashlib.sha256(body.encode()).hexdigest()[:16]


def latest_migration_fingerprints() -> dict[str, tuple[str, str]]:
    """Function name: (the last migration that creates it, the fingerprint it names)."""
    latest = {}
    folder = Path(importlib.import_module("metering.migrations").__file__).parent
    for path in sorted(folder.glob("[0-9]*.py")):  # numbered: later ones last
        module = importlib.import_module(f"metering.migrations.{path.stem}")
        for name, print_ in getattr(module, "CREATES", {}).items():
            latest[name] = (path.stem, print_)
    return latest


def test_every_function_in_the_code_was_created_by_a_migration_from_this_text():
    # given the functions' text in the code today and what the migrations created
    in_code = {name: fingerprint(body) for name, body in functions_in_code().items()}
    created = latest_migration_fingerprints()
    # then the last migration creating each one created exactly this text
    stale = {name: f"{created[name][0]} created {created[name][1]}, the code is {now}"
             for name, now in in_code.items() if name in created and created[name][1] != now}
    assert not stale, ("functions changed without a migration that creates them again "
                       f"(add one, with CREATES): {stale}")
    assert in_code.keys() == created.keys(), "a function no migration names in CREATES"


def test_every_run_path_function_is_found_in_the_code():
    # the parser finds the functions the run path calls (a test of the test)
    assert {"metering_settle", "metering_authorize_batch", "metering_settle_batch",
            "metering_billed_seconds", "metering_closed_charge"} <= functions_in_code().keys()


@pytest.mark.django_db
@pytest.mark.parametrize("name", sorted(functions_in_code()))
def test_the_migrated_function_is_the_one_in_the_code(name):
    # given the database as the migrations left it
    with connection.cursor() as cursor:
        cursor.execute("SELECT prosrc FROM pg_proc WHERE proname = %s", [name])
        bodies = [row[0] for row in cursor.fetchall()]
    # then it holds exactly one function of that name, whose body is the code's today
    assert len(bodies) == 1, f"{name}: {len(bodies)} functions in the database"
    assert bodies[0] == functions_in_code()[name], (
        f"{name} in the database differs from its text in the code: add a migration that "
        "creates it again")
