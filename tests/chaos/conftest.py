"""The private servers of the chaos test, and its figures printed at the end of the pytest run."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.chaos.harness import Servers, private_servers

FIGURES: list[str] = []


@pytest.fixture
def servers() -> Iterator[Servers]:
    """A fixture rather than a block inside the test: its teardown runs even when the test is
    stopped by its timeout, so no PostgreSQL cluster or RabbitMQ node outlives the run."""
    with private_servers() as started:
        yield started


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if FIGURES:
        terminalreporter.section("chaos figures")
        for report in FIGURES:
            terminalreporter.write_line(report)
