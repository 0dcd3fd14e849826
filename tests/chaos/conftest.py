"""The chaos test's figures, printed at the end of the pytest run whether it passed or not."""

from __future__ import annotations

import pytest

FIGURES: list[str] = []


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if FIGURES:
        terminalreporter.section("chaos figures")
        for report in FIGURES:
            terminalreporter.write_line(report)
