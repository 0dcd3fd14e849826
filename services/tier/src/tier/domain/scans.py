"""Scans: what they are, their life cycle, and when the schedule fires them."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum

from croniter import croniter  # type: ignore[import-untyped]


class ScanKind(StrEnum):
    """FULL pulls every provider; SSO and API pull one. Every kind then evaluates the whole estate."""

    FULL = "full"
    SSO = "sso"
    API = "api"


class ScanState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"


SCHEDULE_TRIGGER = "schedule"


@dataclass(frozen=True, slots=True)
class Scan:
    scan_id: str
    kind: ScanKind
    trigger: str  # "schedule" or "rpc:<caller>"
    state: ScanState
    queued_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    accounts_evaluated: int = 0
    changes: int = 0
    trace_id: str = ""
    error: str = ""

    @property
    def duration_ms(self) -> int:
        if self.started_at is None or self.finished_at is None:
            return 0
        return int((self.finished_at - self.started_at).total_seconds() * 1000)


class Cron(str):
    """A cron expression (UTC), checked when made."""

    __slots__ = ()

    def __new__(cls, expression: str) -> Cron:
        if not croniter.is_valid(expression):
            raise ValueError(f"{expression!r} is not a cron expression")
        return super().__new__(cls, expression)

    @classmethod
    def from_setting(cls, text: str) -> Cron:
        return cls(text.strip())


def next_fire(expression: str, after: datetime) -> datetime:
    """The first instant strictly after `after` that the cron expression (in UTC) names."""
    fire = croniter(expression, after.astimezone(UTC)).get_next(datetime)
    assert isinstance(fire, datetime)
    return fire.astimezone(UTC)


def latest_fires(
    schedules: dict[ScanKind, str], after: datetime, now: datetime, window: timedelta
) -> dict[ScanKind, datetime]:
    """Each kind's latest fire in (`after`, `now`], looking back at most `window`: fires missed
    while a pod slept, or jumped over by a test clock moved days ahead, are one scan per kind (a
    scan looks at the whole estate as it is now), not one per missed fire."""
    start = max(after, now - window)
    found: dict[ScanKind, datetime] = {}
    for kind, expression in schedules.items():
        fire = next_fire(expression, start)
        while fire <= now:
            found[kind] = fire
            fire = next_fire(expression, fire)
    return found


def schedule_key(kind: ScanKind, fire: datetime) -> str:
    """The idempotency key of a scheduled scan: every pod enqueues the same fire time once."""
    return f"schedule:{kind.value}:{fire.astimezone(UTC).isoformat()}"


def next_fires(schedules: dict[ScanKind, str], after: datetime) -> tuple[datetime, list[ScanKind]] | None:
    """The next instant after `after` at which any kind is due, and every kind due then."""
    due: dict[datetime, list[ScanKind]] = {}
    for kind, expression in schedules.items():
        due.setdefault(next_fire(expression, after), []).append(kind)
    if not due:
        return None
    first = min(due)
    return first, due[first]
