"""The worker's batch loops: the background work the service host supervises and drains on SIGTERM.
Each loop claims and works one batch at a time through the `Worker` use case."""

from __future__ import annotations

import asyncio
import logging
import random
from dataclasses import dataclass
from datetime import timedelta

from recurring.app.worker import Worker

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoopConfig:
    concurrent_batches: int
    idle_poll: timedelta
    jitter: timedelta


class BatchLoops:
    def __init__(self, worker: Worker, work_queued: asyncio.Event, config: LoopConfig) -> None:
        self._worker = worker
        # Set once a run queues items: an idle loop claims them without waiting out its poll.
        self._work_queued = work_queued
        self._config = config
        self._stopping = asyncio.Event()
        self._stopped = asyncio.Event()
        self._stopped.set()

    async def run_forever(self) -> None:
        """A few batch loops at once, so one batch is invoiced while another one's charges are out.
        However they end (drained, or cancelled with batches in hand), what this worker still holds
        goes back to work at once instead of waiting for its lease."""
        self._stopped.clear()
        try:
            await asyncio.gather(*(self._work_forever() for _ in range(self._config.concurrent_batches)))
        finally:
            self._stopped.set()
            await self._release()

    async def drain(self) -> None:
        """SIGTERM: claim nothing more and finish the batches in hand (the host bounds the wait)."""
        self._stopping.set()
        await self._stopped.wait()

    async def _work_forever(self) -> None:
        while not self._stopping.is_set():
            self._work_queued.clear()  # what is queued from here on wakes the pause below
            worked = await self._worker.work_once()
            pause = self._config.jitter.total_seconds() * random.random()
            if not worked:
                pause += self._config.idle_poll.total_seconds()
            if pause:
                await _first_of(pause, self._stopping, self._work_queued)

    async def _release(self) -> None:
        try:
            released = await self._worker.release()
        except Exception:
            log.exception("handing back claimed work items failed; their lease runs out")
            return
        if released:
            log.info("claimed work items handed back", extra={"items": released})


async def _first_of(seconds: float, *events: asyncio.Event) -> None:
    """Wait `seconds`, or until one of `events` is set."""
    waits = [asyncio.ensure_future(event.wait()) for event in events]
    try:
        await asyncio.wait(waits, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for wait in waits:
            wait.cancel()
