"""Billing runs: which frequencies each kind bills, when it is scheduled, and item outcomes."""

from __future__ import annotations

import enum
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from recurring.domain.schedule import Frequency


class RunKind(enum.Enum):
    DAILY = "daily"
    MONTHLY = "monthly"


KIND_FREQUENCIES: dict[RunKind, tuple[Frequency, ...]] = {
    RunKind.DAILY: (Frequency.WEEKLY, Frequency.BIWEEKLY, Frequency.FOUR_WEEKLY, Frequency.ONE_TIME),
    RunKind.MONTHLY: (Frequency.MONTHLY,),
}


def kind_of(frequency: Frequency) -> RunKind:
    return RunKind.MONTHLY if frequency is Frequency.MONTHLY else RunKind.DAILY


class RunState(enum.Enum):
    RUNNING = "running"
    COMPLETED = "completed"
    HALTED = "halted"
    DRY_RUN = "dry_run"


class ItemStatus(enum.Enum):
    PENDING = "pending"
    CLAIMED = "claimed"
    CHARGED = "charged"
    FAILED = "failed"
    SKIPPED = "skipped"
    # Gateway unreachable: not the customer's failure; tried again later or after a resume.
    DEFERRED = "deferred"


FINISHED = frozenset({ItemStatus.CHARGED, ItemStatus.FAILED, ItemStatus.SKIPPED})
# A gateway's part of a run halts after this many unreachable results in a row.
UNREACHABLE_HALT_THRESHOLD = 5


def latest_scheduled_date(now: datetime, at: time, zone: ZoneInfo) -> date:
    """The most recent billing date whose scheduled time (in `zone`) has passed at `now`."""
    local = now.astimezone(zone)
    today = local.date()
    return today if local.time() >= at else today - timedelta(days=1)


def dates_to_run(last_run: date | None, latest: date, max_catch_up_days: int) -> list[date]:
    """Missed dates after the last run, in order, up to `latest` (at most `max_catch_up_days`)."""
    if last_run is None:
        return [latest]
    if last_run >= latest:
        return []
    first = max(last_run + timedelta(days=1), latest - timedelta(days=max_catch_up_days - 1))
    return [first + timedelta(days=i) for i in range((latest - first).days + 1)]


def progress_per_mille(finished: int, due: int) -> int:
    return 1000 if due == 0 else finished * 1000 // due
