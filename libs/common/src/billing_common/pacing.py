"""Calls per second per name (a gateway), shared by every pod through slots booked in Redis."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from prometheus_client import Histogram
from redis.asyncio import Redis

from billing_common.settings import SettingsError

# A booking takes up to ARGV[2] of the next free slots, `interval` apart, on Redis's clock, but only
# slots that start within ARGV[3] microseconds: slots never come closer than the interval, and a
# caller that books with a short horizon never pushes the next free slot further than that ahead.
# Answers the microseconds until the first slot (booked or, if none was, the next free one) and how
# many were booked.
_BOOK = """
local now_t = redis.call('TIME')
local now = tonumber(now_t[1]) * 1000000 + tonumber(now_t[2])
local interval = tonumber(ARGV[1])
local wanted = tonumber(ARGV[2])
local horizon = tonumber(ARGV[3])
local slot = tonumber(redis.call('GET', KEYS[1]) or '0')
if slot < now then slot = now end
if slot > now + horizon then return {slot - now, 0} end
local booked = math.min(wanted, math.floor((now + horizon - slot) / interval) + 1)
local after = slot + booked * interval
redis.call('SET', KEYS[1], after, 'PX', math.ceil((after - now) / 1000) + 1000)
return {slot - now, booked}
"""
# A horizon no booking reaches: the turn is taken however far ahead it is.
_ANY_HORIZON_US = 2**52

# How late a woken turn may still take its slot (a busy loop wakes it late). Turns that arrive up
# to L late put slots from a window of 1 + L seconds into one second: with slots spaced for a
# fraction h under the limit, no second holds more than the limit while L < h / (1 - h) (52 ms at
# 5%). Four fifths of that are allowed; without headroom there is no such bound, and 20 ms is.
LATE_SHARE = 0.8
MIN_LATE_S = 0.02

PACER_WAIT = Histogram(
    "billing_pacer_wait_seconds",
    "Time a call waited for its slot under a gateway's rate limit",
    ["gateway"],
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)


@dataclass(frozen=True)
class Booking:
    """Turns booked at once: the n-th may go `first_s + n * interval_s` seconds after the booking."""

    booked: int
    first_s: float
    interval_s: float

    def start(self, index: int) -> float:
        return self.first_s + index * self.interval_s


def check_headroom(percent: int, variable: str) -> None:
    """Refuse, at start, a headroom that would leave no slots (100%) or add some (negative)."""
    if not 0 <= percent < 100:
        raise SettingsError(f"{variable} must be from 0 to 99")


def _late_tolerance_s(headroom_percent: int) -> float:
    headroom = headroom_percent / 100
    return max(MIN_LATE_S, LATE_SHARE * headroom / (1 - headroom))


def _interval_us(per_second: int, headroom_percent: int) -> int:
    paced = per_second * (100 - headroom_percent)
    return 100_000_000 // paced if paced > 0 else 0


class RedisPacer:
    """At most `limits[name]` turns per second for each name, across all pods; a name not listed
    (or 0) has no limit.

    Slots are spaced for `headroom_percent` less than the limit: calls reach the gateway with some
    jitter (a late wake-up, network, its own queue), and the gateway counts them on its clock, where
    no second may hold more than the limit.
    """

    def __init__(
        self,
        redis: Redis,
        namespace: str,
        limits: Mapping[str, int],
        headroom_percent: int = 0,
    ) -> None:
        self._namespace = namespace
        self._intervals_us = {name: _interval_us(limit, headroom_percent) for name, limit in limits.items()}
        self._late_s = _late_tolerance_s(headroom_percent)
        self._book = redis.register_script(_BOOK)
        self._waits: dict[str, Any] = {}

    def limited(self, name: str) -> bool:
        return bool(self._intervals_us.get(name, 0))

    async def book(self, name: str, count: int, horizon_s: float | None = None) -> Booking:
        """Book up to `count` turns that start within `horizon_s` (None: however far ahead).

        Times are from the moment of asking (Redis reads its clock in between, so going at them is
        never early); `first_s` is the next free turn's when none was booked.
        """
        interval_us = self._intervals_us.get(name, 0)
        if not interval_us:
            return Booking(count, 0.0, 0.0)
        horizon_us = _ANY_HORIZON_US if horizon_s is None else int(horizon_s * 1_000_000)
        first_us, booked = await self._book(
            keys=[f"{self._namespace}:rate:{name}"], args=[interval_us, count, horizon_us]
        )
        return Booking(int(booked), int(first_us) / 1_000_000, interval_us / 1_000_000)

    def on_time(self, due: float) -> bool:
        """Whether a turn due at loop time `due` may still go: late turns sent together would reach
        the gateway as a burst, so a turn woken too late (a busy event loop) books again."""
        return asyncio.get_running_loop().time() - due <= self._late_s

    def waited(self, name: str, seconds: float) -> None:
        waits = self._waits.get(name)
        if waits is None:
            waits = self._waits[name] = PACER_WAIT.labels(name)
        waits.observe(seconds)

    async def wait_turn(self, name: str) -> None:
        """Wait for a booked slot, however far ahead; woken too late, book again."""
        if not self.limited(name):
            return
        loop = asyncio.get_running_loop()
        started = loop.time()
        while True:
            asked = loop.time()
            booking = await self.book(name, 1)
            if booking.first_s > 0:
                await asyncio.sleep(booking.first_s)
            if self.on_time(asked + booking.first_s):
                break
        self.waited(name, loop.time() - started)
