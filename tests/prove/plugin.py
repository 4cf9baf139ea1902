"""Pytest plumbing of the figures (tests/prove/figures.py): the `figure` marker and
fixture, each part's outcome, the JSON report and the table at the end of the run.
Registered for the whole suite by tests/conftest.py, so `make test` prints the table."""

import pytest

from tests.prove.figures import TITLES, Part, Run, report_path, table

_run = Run()


def pytest_configure(config):
    config.addinivalue_line("markers", "figure(number, tried, counts=''): a part of one of "
                            "the reliability and security figures (tests/prove/figures.py)")
    config.addinivalue_line("markers", "prove: a figure's test (`make prove` runs them)")


def pytest_collection_modifyitems(items):
    for item in items:
        if item.get_closest_marker("figure"):
            item.add_marker(pytest.mark.prove)


def _part(item) -> Part | None:
    marker = item.get_closest_marker("figure")
    if marker is None:
        return None
    part = getattr(item, "_figure_part", None)
    if part is None:
        number = marker.args[0]
        assert number in TITLES, number
        tried = marker.kwargs.get("tried") or item.name
        part = Part(figure=number, test=item.nodeid, tried=tried,
                    counts=marker.kwargs.get("counts", ""))
        item._figure_part = part
        _run.parts.append(part)
    return part


@pytest.fixture
def figure(request) -> Part:
    """The part of its figure this test shows; `figure.add(counts=..., measured=...)`."""
    part = _part(request.node)
    assert part is not None, "a test using `figure` needs @pytest.mark.figure(N, ...)"
    return part


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    part = _part(item)
    if part is None:
        return
    if report.when == "call" or (report.when == "setup" and not report.passed):
        if report.skipped:
            part.outcome = "NOT RUN"
        elif report.passed:
            part.outcome = "PENDING" if part.pending else "PASS"
        else:
            part.outcome = "FAIL"
    elif report.when == "teardown" and report.failed:
        part.outcome = "FAIL"  # e.g. ledger_check after the test


def pytest_sessionfinish(session):
    if _run.parts:
        _run.save(report_path(session.config.rootpath))


def pytest_terminal_summary(terminalreporter, config):
    if not _run.parts:
        return
    terminalreporter.write_line("")
    terminalreporter.write_line(table(_run))
    terminalreporter.write_line(f"(saved in {report_path(config.rootpath)})")
