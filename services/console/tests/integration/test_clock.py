"""The console's "today" on real Redis: the suite's instant when the test clock is on (following
each move), wall time when it is off or has never been set."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime, timedelta

from redis.asyncio import Redis

from billing_common.clock import ControllableClock
from billing_common.suite_clock import ClockControl, SharedClock
from billing_devtools.testing.plugin import InfraEnv, eventually
from console.entrypoints.main import suite_clock
from console.settings import ConsoleSettings

WALL = datetime(2026, 12, 3, 9, tzinfo=UTC)
EVE = datetime(2031, 1, 1, 12, tzinfo=UTC)


async def test_the_consoles_today_is_the_suites_instant_on_the_test_clock_and_wall_time_off_it(
    env: InfraEnv,
) -> None:
    key = f"{env.run_id}:test-clock"
    redis = Redis.from_url(env.infra.redis_url)
    wall = ControllableClock(WALL)
    following = None
    try:
        off, no_reader = await suite_clock(ConsoleSettings(test_clock_key=key), redis, wall)
        assert off is wall and no_reader is None

        on, reader = await suite_clock(ConsoleSettings(test_clock=True, test_clock_key=key), redis, wall)
        assert reader is not None
        assert on.now() == WALL  # the suite's clock was never set: wall time
        following = asyncio.create_task(reader.run())

        control = ClockControl(SharedClock(), redis, key)
        await control.set(EVE)
        await eventually(lambda: on.now() == EVE)
        await control.set(EVE + timedelta(days=3))
        await eventually(lambda: on.now() == EVE + timedelta(days=3))
        assert off.now() == WALL

        # A console started after the clock moved stands at the suite's instant at once.
        later, _ = await suite_clock(ConsoleSettings(test_clock=True, test_clock_key=key), redis, wall)
        assert later.now() == EVE + timedelta(days=3)
    finally:
        if following is not None:
            following.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await following
        await redis.delete(key)
        await redis.aclose()
