"""Billing runs: which frequencies each kind bills, when it is scheduled, and item outcomes."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import date, datetime, time, timedelta
from enum import StrEnum
from zoneinfo import ZoneInfo

from billing_common.errors import FailedPrecondition, InvalidArgument
from billing_common.subscriptions import Frequency
from recurring.domain import events as ev


class RunKind(StrEnum):
    DAILY = "daily"
    MONTHLY = "monthly"


KIND_FREQUENCIES: dict[RunKind, tuple[Frequency, ...]] = {
    RunKind.DAILY: (Frequency.WEEKLY, Frequency.BIWEEKLY, Frequency.FOUR_WEEKLY, Frequency.ONE_TIME),
    RunKind.MONTHLY: (Frequency.MONTHLY,),
}


def kind_of(frequency: Frequency) -> RunKind:
    return RunKind.MONTHLY if frequency is Frequency.MONTHLY else RunKind.DAILY


class RunState(StrEnum):
    RUNNING = "running"
    COMPLETED = "completed"
    HALTED = "halted"
    DRY_RUN = "dry_run"


class ItemStatus(StrEnum):
    PENDING = "pending"
    CLAIMED = "claimed"
    CHARGED = "charged"
    FAILED = "failed"
    SKIPPED = "skipped"
    # Gateway unreachable: not the customer's failure; tried again later or after a resume.
    DEFERRED = "deferred"
    # Kept failing for a reason of ours (bad data, an error while preparing): set aside with its
    # reason, so the run completes without it; ResumeRun sends it back to work.
    PARKED = "parked"


FINISHED = frozenset({ItemStatus.CHARGED, ItemStatus.FAILED, ItemStatus.SKIPPED, ItemStatus.PARKED})
# The delay after a failure doubles per failure, up to this many doublings.
MAX_BACKOFF_DOUBLINGS = 6


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


@dataclass(frozen=True)
class AfterFailure:
    """What becomes of an item after a try that failed for a reason of ours."""

    failures: int
    park: bool
    retry_in: timedelta


def after_failure(failures: int, max_failures: int, base_delay: timedelta) -> AfterFailure:
    """`failures` counts this one. At `max_failures` the item is parked; before that it waits
    `base_delay`, doubled per earlier failure, so a short outage costs a try or two, not all."""
    if failures >= max_failures:
        return AfterFailure(failures, True, timedelta(0))
    doublings = min(max(failures - 1, 0), MAX_BACKOFF_DOUBLINGS)
    return AfterFailure(failures, False, base_delay * 2**doublings)


@dataclass(frozen=True)
class Progress:
    """What the scheduler last saw of a running run: its open items, and since when (billing clock)
    that number has stood; `stalled_at` once it was reported stalled."""

    open_items: int | None = None
    since: datetime | None = None
    stalled_at: datetime | None = None

    @property
    def stalled(self) -> bool:
        return self.stalled_at is not None


def watch(seen: Progress, open_items: int, now: datetime, stalled_after: timedelta) -> tuple[Progress, bool]:
    """The run's progress after another look, and whether it stalled just now (reported once).

    Any change in the number of open items is progress (items finished, parked or newly queued);
    a number that stands for `stalled_after` means nothing moves: a dependency does not answer.
    """
    if seen.since is None or seen.open_items != open_items:
        return Progress(open_items, now), False
    if not seen.stalled and now - seen.since >= stalled_after:
        return replace(seen, stalled_at=now), True
    return seen, False


def looked_at(
    run: Run, open_items: int, now: datetime, stalled_after: timedelta
) -> tuple[Run, list[ev.RunEvent]] | None:
    """A running run with its progress after the scheduler's look (`watch`), announced stalled the
    first time nothing moved for `stalled_after`. None: the run is not running."""
    if run.state is not RunState.RUNNING:
        return None
    progress, newly = watch(run.progress, open_items, now, stalled_after)
    watched = replace(run, progress=progress)
    return watched, [ev.RunStalled(watched)] if newly else []


def blocks_next_date(state: RunState, progress: Progress) -> bool:
    """Catch-up creates a kind's dates in order, each after the previous run is done (so an
    occurrence renewed by one run is queued by the next), but never waits on a stalled run."""
    return state is RunState.RUNNING and not progress.stalled


@dataclass(frozen=True)
class RunCounts:
    due: int = 0
    charged: int = 0
    failed: int = 0
    skipped: int = 0
    deferred: int = 0
    pending: int = 0
    parked: int = 0

    @property
    def finished(self) -> int:
        return self.charged + self.failed + self.skipped + self.parked


@dataclass(frozen=True)
class Run:
    run_id: str
    billing_date: date
    kind: RunKind
    state: RunState
    dry_run: bool
    started_at: datetime
    finished_at: datetime | None = None
    halted_gateways: tuple[str, ...] = ()
    counts: RunCounts = field(default_factory=RunCounts)
    progress: Progress = field(default_factory=Progress)
    # How long its work really took (the database's clock; the test clock may stand still meanwhile),
    # once completed.
    working_time: timedelta | None = None
    # The trace of the scheduler tick or RunBilling call that started it: whoever completes the run
    # (its last batch, or the watcher when that batch's pod died) says so in that trace.
    trace_context: Mapping[str, str] = field(default_factory=dict, compare=False)


def check_run(billing_date: date | None, kind: RunKind | None) -> tuple[date, RunKind]:
    """A run (or dry run) is asked for by date and kind."""
    if billing_date is None:
        raise InvalidArgument.of("billing_date", "required")
    if kind is None:
        raise InvalidArgument.of("kind", "must be DAILY or MONTHLY")
    return billing_date, kind


def check_resume(gateway: str) -> None:
    """A resume names the gateway whose part of the run goes on."""
    if not gateway:
        raise InvalidArgument.of("gateway", "required")


def check_resumed(run_id: str, gateway: str, resumed: bool, requeued: int) -> None:
    """A resume that neither lifted the gateway's halt nor sent parked items back is refused."""
    if not resumed and not requeued:
        raise FailedPrecondition(f"gateway {gateway} is neither halted nor has parked items in run {run_id}")


def lock_name(kind: RunKind, billing_date: date) -> str:
    """The lock one pod holds while it creates the run of a date and kind; under the service's
    namespace it reads `recurring:<kind>:lock:<date>`."""
    return f"{kind.value}:lock:{billing_date.isoformat()}"


def new_run(run_id: str, billing_date: date, kind: RunKind, now: datetime) -> Run:
    """The real run of a date and kind, running from now."""
    return Run(run_id, billing_date, kind, RunState.RUNNING, False, now)


def dry_run_of(
    run_id: str, billing_date: date, kind: RunKind, billable: int, skipped: int, now: datetime
) -> Run:
    """What a run of the date would do, finished as soon as it is counted: every due subscription,
    the ones it would bill pending and the others skipped."""
    counts = RunCounts(due=billable + skipped, skipped=skipped, pending=billable)
    return Run(run_id, billing_date, kind, RunState.DRY_RUN, True, now, finished_at=now, counts=counts)


def ending(
    run: Run, open_items: int, counts: RunCounts, now: datetime
) -> tuple[Run, list[ev.RunEvent]] | None:
    """How a running run with no open item left ends: HALTED while one of its gateways is halted (its
    deferred items wait for a resume), else COMPLETED now with its counts, announced. None while it
    has open items or is not running."""
    if open_items or run.state is not RunState.RUNNING:
        return None
    if run.halted_gateways:
        return replace(run, state=RunState.HALTED), []
    completed = replace(run, state=RunState.COMPLETED, finished_at=now, counts=counts)
    return completed, [ev.RunCompleted(completed)]


def reopens(run: Run, queued: int) -> bool:
    """A completed run that newly due items were added to runs again (a halted or running one goes
    on as it is)."""
    return queued > 0 and run.state is RunState.COMPLETED


@dataclass(frozen=True)
class RunItem:
    """A run's work item as people review it: what became of it, on which gateway, and why."""

    item_id: int
    subscription_id: str
    due_date: date
    gateway: str
    status: ItemStatus
    reason: str
    invoice_id: str | None


@dataclass(frozen=True)
class WorkItem:
    item_id: int
    run_id: str
    subscription_id: str
    due_date: date
    occurrence_key: str
    gateway: str
    claim_token: str
    # Tries that failed for a reason of ours so far (a lease that ran out counts at the claim), and
    # the last word on the item.
    failures: int = 0
    detail: str = ""
    # The trace of the run (or RunBilling call) that queued the item: its batch continues it.
    trace_context: Mapping[str, str] = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class ItemResult:
    """How a work item ends: its status, a short detail, and the invoice it produced."""

    item: WorkItem
    status: ItemStatus
    detail: str = ""
    invoice_id: str | None = None
