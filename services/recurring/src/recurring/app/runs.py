"""Billing runs: one per date and kind (Redis lock + fencing + a unique row), caught up in date
order, with their due occurrences written as work items that workers in every pod claim."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import uuid
from dataclasses import dataclass
from datetime import date, time, timedelta
from zoneinfo import ZoneInfo

from billing_common import telemetry
from billing_common.clock import Clock
from billing_common.errors import Unavailable, existing
from billing_common.locks import Locks
from recurring.app.ports import OutageCounter, RecurringMetrics, Store, UnitOfWork
from recurring.domain import events as ev
from recurring.domain.runs import (
    KIND_FREQUENCIES,
    Progress,
    Run,
    RunKind,
    RunState,
    blocks_next_date,
    check_resume,
    check_resumed,
    check_run,
    dates_to_run,
    dry_run_of,
    ending,
    latest_scheduled_date,
    lock_name,
    looked_at,
    new_run,
    reopens,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Schedule:
    zone: ZoneInfo
    times: dict[RunKind, time]
    max_catch_up_days: int
    lock_ttl: timedelta
    stalled_after: timedelta


class Runs:
    def __init__(
        self,
        store: Store,
        locks: Locks,
        outages: OutageCounter,
        clock: Clock,
        schedule: Schedule,
        metrics: RecurringMetrics,
    ) -> None:
        self._store = store
        self._locks = locks
        self._outages = outages
        self._clock = clock
        self._schedule = schedule
        self._metrics = metrics
        # Set once items are queued (committed): this pod's idle worker claims them without waiting
        # out its poll.
        self.work_queued = asyncio.Event()

    async def start(self, billing_date: date, kind: RunKind, wait: timedelta) -> Run | None:
        """Create the date's run (or add newly due items to it); None if another pod holds the lock."""
        name = lock_name(kind, billing_date)
        async with self._locks.try_hold(name, self._schedule.lock_ttl, wait=wait) as lease:
            if lease is None:
                return None
            # The run's trace: its items store this span's context, and their batches continue it.
            attributes = {"run.billing_date": billing_date.isoformat(), "run.kind": kind.value}
            with telemetry.span("recurring.run", attributes=attributes, keep=True) as span:
                async with self._store.transaction() as uow:
                    await uow.check_fence(lease)
                    found = await uow.runs.find(billing_date, kind)
                    run = found or new_run(f"run_{uuid.uuid4().hex}", billing_date, kind, self._clock.now())
                    if found is None:
                        await uow.runs.add([run])
                    due = await uow.runs.enqueue_due(run.run_id, billing_date, KIND_FREQUENCIES[kind])
                    if found is None:
                        await uow.outbox.add([ev.RunStarted(run, due)])
                    elif reopens(run, due):
                        await _reopen(uow, run.run_id)
                if due:
                    self.work_queued.set()
                span.set_attributes({"run.id": run.run_id, "run.items_queued": due})
                facts = {"run_id": run.run_id, "billing_date": billing_date.isoformat(), "kind": kind.value}
                if found is None or due:
                    log.info(
                        "run started" if found is None else "run extended", extra={**facts, "queued": due}
                    )
                await self.finish_if_done(run.run_id)
                return await self.get(run.run_id)

    async def run_billing(self, asked_date: date | None, asked_kind: RunKind | None, dry_run: bool) -> Run:
        billing_date, kind = check_run(asked_date, asked_kind)
        if dry_run:
            async with self._store.transaction() as uow:
                billable, skipped = await uow.runs.count_due(billing_date, KIND_FREQUENCIES[kind])
                now = self._clock.now()
                run = dry_run_of(f"dry_{uuid.uuid4().hex}", billing_date, kind, billable, skipped, now)
                await uow.runs.add([run])
            return run
        started = await self.start(billing_date, kind, wait=timedelta(seconds=30))
        if started is None:
            raise Unavailable(f"another pod is creating the {kind.value} run of {billing_date}; try again")
        return started

    async def get(self, run_id: str) -> Run:
        async with self._store.transaction() as uow:
            return existing(await uow.runs.load([run_id]), run_id, "run")

    async def resume(self, run_id: str, gateway: str) -> Run:
        """Resume the gateway's halted part and send its parked items back to work."""
        check_resume(gateway)
        async with self._store.transaction() as uow:
            existing(await uow.runs.load([run_id], lock=True), run_id, "run")
            resumed = await uow.runs.resume(run_id, gateway)
            check_resumed(run_id, gateway, resumed, await uow.items.requeue_parked(run_id, gateway))
            await _reopen(uow, run_id)
        await self._outages.reachable(run_id, gateway)
        await self.finish_if_done(run_id)
        return await self.get(run_id)

    async def finish_if_done(self, run_id: str) -> None:
        """A run whose open items are all done completes; with halted gateways it stays HALTED."""
        async with self._store.transaction() as uow:
            if await uow.runs.open_items(run_id):
                return  # the common case, known without waiting for the run's lock
            run = (await uow.runs.load([run_id], lock=True)).get(run_id)
            if run is None:
                return
            counts = (await uow.runs.counts([run_id]))[run_id]
            ended = ending(run, await uow.runs.open_items(run_id), counts, self._clock.now())
            if ended is None:
                return
            run, events = ended
            await uow.runs.set_states([run_id], run.state, run.finished_at)
            await uow.outbox.add(events, [run.trace_context for _ in events])
        with telemetry.within(run.trace_context):
            log.info(f"run {run.state.value}", extra={"run_id": run_id, **dataclasses.asdict(counts)})

    async def watch_progress(self) -> list[Run]:
        """Look at every running run: one with nothing left completes (its last worker may have
        failed to say so), one whose open items have not moved for `stalled_after` is reported
        once (run.stalled). Returns the runs that are stalled now."""
        async with self._store.transaction() as uow:
            running = await uow.runs.running()
        stalled = []
        for candidate in running:
            await self.finish_if_done(candidate.run_id)
            async with self._store.transaction() as uow:
                run = (await uow.runs.load([candidate.run_id], lock=True)).get(candidate.run_id)
                if run is None:
                    continue
                open_items = await uow.runs.open_items(run.run_id)
                looked = looked_at(run, open_items, self._clock.now(), self._schedule.stalled_after)
                if looked is None:
                    continue
                watched, events = looked
                if watched.progress != run.progress:
                    await uow.runs.save_progress({run.run_id: watched.progress})
                await uow.outbox.add(events, [run.trace_context for _ in events])
            if watched.progress.stalled:
                stalled.append(watched)
        for kind in RunKind:
            self._metrics.runs_stalled(kind, sum(1 for run in stalled if run.kind is kind))
        return stalled

    async def catch_up(self) -> int:
        """Create the runs whose time has come, oldest first; the next date waits for the previous
        run unless that one is stalled."""
        created = 0
        for kind, at in self._schedule.times.items():
            latest = latest_scheduled_date(self._clock.now(), at, self._schedule.zone)
            while True:
                async with self._store.transaction() as uow:
                    last = await uow.runs.latest(kind, latest)
                if last is not None and blocks_next_date(last.state, last.progress):
                    await self.finish_if_done(last.run_id)  # its last worker may have failed to say so
                    last = await self.get(last.run_id)
                    if blocks_next_date(last.state, last.progress):
                        break
                pending = dates_to_run(
                    last.billing_date if last else None, latest, self._schedule.max_catch_up_days
                )
                if not pending:
                    break
                if await self.start(pending[0], kind, wait=timedelta(0)) is None:
                    break
                created += 1
        return created


async def _reopen(uow: UnitOfWork, run_id: str) -> None:
    """A run with work again runs, its progress watched afresh."""
    await uow.runs.set_states([run_id], RunState.RUNNING, None)
    await uow.runs.save_progress({run_id: Progress()})
