"""Calls per second per name (a gateway), shared by every pod through slots booked in Redis."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from prometheus_client import Histogram
from redis.asyncio import Redis

from billing_common.settings import SettingsError

# Each turn books the next free slot, `interval` after the previous one, on Redis's clock, and
# learns how many microseconds to wait for it: slots never come closer than the interval.
_BOOK = """
local now_t = redis.call('TIME')
local now = tonumber(now_t[1]) * 1000000 + tonumber(now_t[2])
local interval = tonumber(ARGV[1])
local slot = tonumber(redis.call('GET', KEYS[1]) or '0')
if slot < now then slot = now end
redis.call('SET', KEYS[1], slot + interval, 'PX', math.ceil((slot + interval - now) / 1000) + 1000)
return slot - now
"""

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
    gets `default` (0: no limit).

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
        *,
        default: int = 0,
    ) -> None:
        self._namespace = namespace
        self._intervals_us = {name: _interval_us(limit, headroom_percent) for name, limit in limits.items()}
        self._default_us = _interval_us(default, headroom_percent)
        self._late_s = _late_tolerance_s(headroom_percent)
        self._book = redis.register_script(_BOOK)
        self._waits: dict[str, Any] = {}

    async def wait_turn(self, name: str) -> None:
        """Wait for a booked slot. Woken too late (a busy event loop), the slot is given up and a new
        one booked: late calls sent together would reach the gateway as a burst."""
        interval_us = self._intervals_us.get(name, self._default_us)
        if not interval_us:
            return
        key = f"{self._namespace}:rate:{name}"
        loop = asyncio.get_running_loop()
        started = loop.time()
        while True:
            asked = loop.time()
            wait_s = int(await self._book(keys=[key], args=[interval_us])) / 1_000_000
            # Redis read its clock between asking and answering: sleeping from the answer is never
            # early, and lateness counted from the asking includes a slow answer.
            if wait_s > 0:
                await asyncio.sleep(wait_s)
            if loop.time() - (asked + wait_s) <= self._late_s:
                break
        waits = self._waits.get(name)
        if waits is None:
            waits = self._waits[name] = PACER_WAIT.labels(name)
        waits.observe(loop.time() - started)
