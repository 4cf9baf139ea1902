"""pytest prints a failing test's captured log lines in its report (CI's output): those
go through the service's scrubbing too (tests/conftest.py installs this)."""

import logging

from config.logs import redact


class ScrubbingFormatter(logging.Formatter):
    def __init__(self, inner: logging.Formatter):
        super().__init__()
        self.inner = inner

    def format(self, record: logging.LogRecord) -> str:
        return redact(self.inner.format(record))


def scrub_pytest_log_reports(config) -> None:
    plugin = config.pluginmanager.get_plugin("logging-plugin")
    if plugin is None:
        return
    for handler in (plugin.caplog_handler, plugin.report_handler):
        if not isinstance(handler.formatter, ScrubbingFormatter):
            handler.setFormatter(ScrubbingFormatter(handler.formatter or logging.Formatter()))
