"""The background loops of a pod: the scan scheduler (trigger), the scan worker, the model refresher."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import timedelta

from billing_common.clock import Clock
from tier.app.accounts import Accounts
from tier.app.scans import Scans
from tier.domain.scans import ScanKind, next_fires

log = logging.getLogger(__name__)
# Sleep at most this long before looking at the clock again (it may be moved, e.g. in tests).
SCHEDULER_NAP = timedelta(seconds=30)


async def run_scheduler(scans: Scans, schedules: dict[ScanKind, str], clock: Clock) -> None:
    """Queue each kind at its cron times. Every pod does this; the scheduled key makes it one scan."""
    if not schedules:
        return
    last = clock.now()
    while True:
        due = next_fires(schedules, last)
        assert due is not None
        fire, kinds = due
        wait = (fire - clock.now()).total_seconds()
        if wait > 0:
            await asyncio.sleep(min(wait, SCHEDULER_NAP.total_seconds()))
            continue
        await scans.enqueue_scheduled(fire, kinds)
        last = fire


async def run_worker(scans: Scans, poll_interval: timedelta) -> None:
    """Claim and run queued scans, one at a time in this pod; wake early when this pod queued one."""
    while True:
        scans.queued.clear()
        if await scans.run_next():
            continue
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(scans.queued.wait(), poll_interval.total_seconds())


async def run_refresher(accounts: Accounts, interval: timedelta) -> None:
    """Merge other pods' writes into this pod's model, so its reads stay current."""
    while True:
        await asyncio.sleep(interval.total_seconds())
        await accounts.refresh()
