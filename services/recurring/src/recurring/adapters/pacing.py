"""Gateway pacing and outage counting shared by every pod through Redis."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import timedelta

from redis.asyncio import Redis

from billing_common.locks import LockNotAcquired, RedisLocks

# Each charge books the next free slot, `interval` after the previous one, on Redis's clock, and
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


# How late a woken charge may still take its slot (timer granularity on a busy loop).
LATE_S = 0.02


class RedisPacer:
    """At most `per_second` charges per gateway per second across all pods (0: unlimited).

    Slots are spaced for `headroom_percent` less than the limit: charges reach the gateway with some
    jitter (network, its own queue), and the gateway counts them on its clock, where a second must
    never hold more than the limit.
    """

    def __init__(self, redis: Redis, namespace: str, per_second: int, headroom_percent: int = 0) -> None:
        self._redis = redis
        self._namespace = namespace
        paced = per_second * (100 - headroom_percent)
        self._interval_us = 100_000_000 // paced if paced > 0 else 0
        self._book = redis.register_script(_BOOK)

    async def wait_turn(self, gateway: str) -> None:
        """Wait for a booked slot. Woken too late (a busy event loop), the slot is given up and a new
        one booked: late charges sent together would reach the gateway as a burst."""
        if not self._interval_us:
            return
        key = f"{self._namespace}:rate:{gateway}"
        loop = asyncio.get_running_loop()
        while True:
            wait_s = int(await self._book(keys=[key], args=[self._interval_us])) / 1_000_000
            due = loop.time() + wait_s
            if wait_s > 0:
                await asyncio.sleep(wait_s)
            if loop.time() - due <= max(self._interval_us / 1_000_000, LATE_S):
                return


class RedisOutageCounter:
    """Consecutive unreachable results per run and gateway (reset by any answer that got through)."""

    TTL_S = 7 * 86400

    def __init__(self, redis: Redis, namespace: str) -> None:
        self._redis = redis
        self._namespace = namespace

    def _key(self, run_id: str, gateway: str) -> str:
        return f"{self._namespace}:outage:{run_id}:{gateway}"

    async def unreachable(self, run_id: str, gateway: str) -> int:
        key = self._key(run_id, gateway)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.incr(key)
            pipe.expire(key, self.TTL_S)
            count, _ = await pipe.execute()
        return int(count)

    async def reachable(self, run_id: str, gateway: str) -> None:
        await self._redis.delete(self._key(run_id, gateway))


class RedisRunLocks:
    """The run-creation lock: yields the fencing token, or None when another pod holds it."""

    def __init__(self, locks: RedisLocks) -> None:
        self._locks = locks

    @contextlib.asynccontextmanager
    async def hold(self, name: str, ttl: timedelta, wait: timedelta) -> AsyncIterator[int | None]:
        try:
            async with self._locks.hold(name, ttl, wait=wait) as lease:
                yield lease.fencing_token
        except LockNotAcquired:
            yield None
