"""Time as a dependency: production code asks a Clock, tests and the test clock move it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime:
        """The current instant, timezone-aware in UTC."""
        ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)


class ControllableClock:
    """A clock that stands still until told to move; used by tests and the test-clock RPCs."""

    def __init__(self, start: datetime) -> None:
        self._now = _require_aware(start)

    def now(self) -> datetime:
        return self._now

    def set(self, instant: datetime) -> None:
        self._now = _require_aware(instant)

    def advance(self, delta: timedelta) -> datetime:
        if delta < timedelta(0):
            raise ValueError("a clock never moves backwards")
        self._now += delta
        return self._now


def _require_aware(instant: datetime) -> datetime:
    if instant.tzinfo is None:
        raise ValueError("clock instants must be timezone-aware")
    return instant.astimezone(UTC)
