"""Calls per second per name (a gateway), shared by every pod through slots booked in Redis."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from prometheus_client import Counter, Histogram
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

# Share of the lateness a spacing absorbs (see `Spacing`) that a woken turn may use.
LATE_SHARE = 0.8
DEFAULT_HEADROOM_PERCENT = 2

PACER_WAIT = Histogram(
    "billing_pacer_wait_seconds",
    "Time a call waited for its slot under a gateway's rate limit",
    ["gateway"],
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)

PACER_LATE_TURNS = Counter(
    "billing_pacer_late_turns_total",
    "Turns woken too late to go (a busy event loop): each is booked again and its slot goes unused",
    ["gateway"],
)


@dataclass(frozen=True)
class Spacing:
    """How far apart one name's slots are (whole microseconds, as booked), and how late a woken turn
    may still take its slot.

    Turns that go up to L after their slots put the slots of a window of 1 + L seconds into one
    second; slots `interval_us` apart hold at most `limit` of them while L <= limit x interval - 1
    second (the lateness the real spacing absorbs: about h / (1 - h) of a second for slots spaced for
    a fraction h under the limit). A turn may use `LATE_SHARE` of it; a turn later than that books
    again.
    """

    interval_us: int
    late_s: float

    @classmethod
    def of(cls, per_second: int, headroom_percent: int) -> Spacing:
        """Slots for `per_second` less `headroom_percent`; never closer than that (rounded up)."""
        paced = per_second * (100 - headroom_percent)
        interval_us = -(-100_000_000 // paced)
        absorbed_s = per_second * interval_us / 1_000_000 - 1
        return cls(interval_us, LATE_SHARE * absorbed_s)

    @property
    def interval_s(self) -> float:
        return self.interval_us / 1_000_000

    def on_time(self, late_s: float) -> bool:
        """Whether a turn that goes `late_s` after its slot still keeps every second within the limit."""
        return late_s <= self.late_s


@dataclass(frozen=True)
class Booking:
    """Turns booked at once: the n-th may go `first_s + n * interval_s` seconds after the booking."""

    booked: int
    first_s: float
    interval_s: float

    def start(self, index: int) -> float:
        return self.first_s + index * self.interval_s


def check_headroom(percent: int, variable: str) -> None:
    """Refuse, at start, a headroom that leaves no slots (100%), adds some (negative) or absorbs no
    lateness at all (0: any turn woken late could put one call too many into a second)."""
    if not 0 < percent < 100:
        raise SettingsError(f"{variable} must be from 1 to 99")


class RedisPacer:
    """At most `limits[name]` turns per second for each name, across all pods; a name not listed
    (or 0) has no limit.

    Slots are spaced for `headroom_percent` less than the limit: calls reach the gateway with some
    jitter (a late wake-up, network, its own queue), and the gateway counts them on its clock, where
    no second may hold more than the limit. Turns are timed on `clock` (monotonic seconds; precise,
    where an event loop's clock may move in whole milliseconds).
    """

    def __init__(
        self,
        redis: Redis,
        namespace: str,
        limits: Mapping[str, int],
        headroom_percent: int = DEFAULT_HEADROOM_PERCENT,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self._namespace = namespace
        self._spacings = {
            name: Spacing.of(limit, headroom_percent) for name, limit in limits.items() if limit > 0
        }
        self._clock = clock
        self._book = redis.register_script(_BOOK)
        self._waits: dict[str, Any] = {}

    def limited(self, name: str) -> bool:
        return name in self._spacings

    def now(self) -> float:
        """The time turns are due and taken at (seconds on the pacer's monotonic clock)."""
        return self._clock()

    async def book(self, name: str, count: int, horizon_s: float | None = None) -> Booking:
        """Book up to `count` turns that start within `horizon_s` (None: however far ahead).

        Times are from the moment of asking (Redis reads its clock in between, so going at them is
        never early); `first_s` is the next free turn's when none was booked.
        """
        spacing = self._spacings.get(name)
        if spacing is None:
            return Booking(count, 0.0, 0.0)
        horizon_us = _ANY_HORIZON_US if horizon_s is None else int(horizon_s * 1_000_000)
        first_us, booked = await self._book(
            keys=[f"{self._namespace}:rate:{name}"], args=[spacing.interval_us, count, horizon_us]
        )
        return Booking(int(booked), int(first_us) / 1_000_000, spacing.interval_s)

    def on_time(self, name: str, due: float) -> bool:
        """Whether a turn of `name` due at `due` (on `now()`'s clock) may still go: late turns sent
        together would reach the gateway as a burst, so a turn woken too late (a busy event loop)
        books again."""
        spacing = self._spacings.get(name)
        if spacing is None or spacing.on_time(self.now() - due):
            return True
        PACER_LATE_TURNS.labels(name).inc()
        return False

    def waited(self, name: str, seconds: float) -> None:
        waits = self._waits.get(name)
        if waits is None:
            waits = self._waits[name] = PACER_WAIT.labels(name)
        waits.observe(seconds)

    async def wait_turn(self, name: str) -> None:
        """Wait for a booked slot, however far ahead; woken too late, book again."""
        if not self.limited(name):
            return
        started = self.now()
        while True:
            asked = self.now()
            booking = await self.book(name, 1)
            # Counted from the answer, going is never early; lateness counted from the asking
            # includes a slow answer.
            if booking.first_s > 0:
                await asyncio.sleep(booking.first_s)
            if self.on_time(name, asked + booking.first_s):
                break
        self.waited(name, self.now() - started)
