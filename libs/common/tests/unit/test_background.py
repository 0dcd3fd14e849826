"""Background work done again each interval (gauge refreshes, audits): what stops a round and what
stops the work."""

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import timedelta

import pytest
import redis.exceptions

from billing_common.service import Background

NO_WAIT = timedelta(0)
AN_HOUR = timedelta(hours=1)


class Rounds:
    """A step that counts its rounds, raising the given errors in the rounds they are given for."""

    def __init__(self, failures: dict[int, Exception] | None = None) -> None:
        self.done = 0
        self._failures = failures or {}
        self._changed = asyncio.Event()

    async def step(self) -> None:
        self.done += 1
        self._changed.set()
        if self.done in self._failures:
            raise self._failures[self.done]

    async def reach(self, wanted: int, run: Callable[[], Awaitable[None]]) -> None:
        work = asyncio.create_task(run())
        try:
            while self.done < wanted:
                self._changed.clear()
                await asyncio.wait_for(self._changed.wait(), 5)
        finally:
            work.cancel()
            await asyncio.gather(work, return_exceptions=True)


async def test_a_round_a_dependency_failure_stops_is_logged_and_the_next_round_comes(
    caplog: pytest.LogCaptureFixture,
) -> None:
    rounds = Rounds({1: redis.exceptions.ConnectionError("Error 111 connecting to 127.0.0.1:6379.")})
    with caplog.at_level(logging.WARNING):
        await rounds.reach(3, Background.every(NO_WAIT, rounds.step, "gauge refresh").run)
    assert [r.getMessage() for r in caplog.records] == ["gauge refresh failed"]


async def test_a_bug_in_a_round_stops_the_work_for_the_supervisor_to_report() -> None:
    rounds = Rounds({1: ValueError("a bug")})
    with pytest.raises(ValueError, match="a bug"):
        await Background.every(NO_WAIT, rounds.step, "gauge refresh").run()


async def test_the_first_round_comes_at_once_or_after_one_interval_with_wait_first() -> None:
    at_once = Rounds()
    await at_once.reach(1, Background.every(AN_HOUR, at_once.step, "audit").run)
    waiting = Rounds()
    work = asyncio.create_task(Background.every(AN_HOUR, waiting.step, "audit", wait_first=True).run())
    await asyncio.sleep(0.05)
    work.cancel()
    await asyncio.gather(work, return_exceptions=True)
    assert at_once.done == 1 and waiting.done == 0
