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


def _parts(item) -> list[Part]:
    """The parts a test shows (one per `figure` marker; a test may show several)."""
    parts = getattr(item, "_figure_parts", None)
    if parts is None:
        parts = []
        for marker in item.iter_markers("figure"):
            number = marker.args[0]
            assert number in TITLES, number
            parts.append(Part(figure=number, test=item.nodeid,
                              tried=marker.kwargs.get("tried") or item.originalname,
                              counts=marker.kwargs.get("counts", ""),
                              case=item.callspec.id if hasattr(item, "callspec") else ""))
        item._figure_parts = parts
        _run.parts.extend(parts)
    return parts


@pytest.fixture
def figure(request) -> Part:
    """The part of its figure this test shows; `figure.add(counts=..., measured=...)`."""
    parts = _parts(request.node)
    assert parts, "a test using `figure` needs @pytest.mark.figure(N, ...)"
    return parts[0]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    for part in _parts(item):
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
