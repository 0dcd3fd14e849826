"""The worker's batch loops: the background work the service host supervises and drains on SIGTERM.
Each loop claims and works one batch at a time through the `Worker` use case, under the batch's span."""

from __future__ import annotations

import asyncio
import logging
import random
from dataclasses import dataclass
from datetime import timedelta
from time import perf_counter

from billing_common import telemetry
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
            worked = await self.work_once()
            pause = self._config.jitter.total_seconds() * random.random()
            if not worked:
                pause += self._config.idle_poll.total_seconds()
            if pause:
                await _first_of(pause, self._stopping, self._work_queued)

    async def work_once(self) -> int:
        """Claim one batch and work it; how many items. The batch continues the trace of the run
        that queued its items (linked to any other's)."""
        items = await self._worker.claim()
        if not items:
            return 0
        run_ids = sorted({item.run_id for item in items})
        contexts = list(
            {str(item.trace_context.get("traceparent")): item.trace_context for item in items}.values()
        )
        contexts.sort(key=lambda stored: not stored)
        started = perf_counter()
        attributes = {"batch.items": len(items), "run.ids": run_ids}
        with telemetry.span(
            "recurring.batch", parent=contexts[0], links=contexts[1:], attributes=attributes
        ) as span:
            worked = await self._worker.work(items)
            if worked.failure is not None:
                telemetry.failed(span, worked.failure)
            outcomes = worked.outcomes
            span.set_attributes({f"batch.{outcome}": count for outcome, count in outcomes.items()})
            log.info(
                "batch worked",
                extra={
                    "run_ids": run_ids,
                    "items": len(items),
                    "charges": sum(outcomes.values()),
                    **outcomes,
                    "seconds": round(perf_counter() - started, 3),
                },
            )
        return len(items)

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
