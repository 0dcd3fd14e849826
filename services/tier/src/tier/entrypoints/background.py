"""The background loops of a pod: the scan scheduler (trigger) and the scan worker."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from datetime import datetime, timedelta

from billing_common.clock import Clock
from billing_common.suite_clock import pause
from tier.app.scans import Scans
from tier.domain.scans import ScanKind, latest_fires, next_fires

log = logging.getLogger(__name__)
# Sleep at most this long before looking at the clock again (it may be moved, e.g. in tests).
SCHEDULER_NAP = timedelta(seconds=30)
# How far back missed fires are looked for (each kind then scans once, at its latest fire).
MISSED_FIRES_WINDOW = timedelta(days=7)


class ScanScheduler:
    """Queues each kind at its cron times. Every pod does this; the scheduled key makes it one scan."""

    def __init__(self, scans: Scans, schedules: dict[ScanKind, str], clock: Clock) -> None:
        self._scans = scans
        self._schedules = schedules
        self._clock = clock
        self._last = clock.now()

    async def run(self) -> None:
        while self._schedules:
            due = next_fires(self._schedules, self._last)
            assert due is not None
            now = self._clock.now()
            wait = (due[0] - now).total_seconds()
            if wait > 0:
                await pause(self._clock, min(wait, SCHEDULER_NAP.total_seconds()))
                continue
            for kind, fire in latest_fires(self._schedules, self._last, now, MISSED_FIRES_WINDOW).items():
                await self._scans.enqueue_scheduled(fire, [kind])
            self._last = now

    async def due(self, now: datetime) -> Mapping[str, int]:
        """Whether a fire time has come that this pod has not queued yet (for the test clock)."""
        due = next_fires(self._schedules, self._last) if self._schedules else None
        return {"scheduled scans to queue": int(due is not None and due[0] <= now)}


async def run_worker(scans: Scans, poll_interval: timedelta) -> None:
    """Claim and run queued scans, one at a time in this pod; wake early when this pod queued one."""
    while True:
        scans.queued.clear()
        if await scans.run_next():
            continue
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(scans.queued.wait(), poll_interval.total_seconds())
