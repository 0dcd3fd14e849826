"""Calls per second per name (a gateway), shared by every pod through slots booked in Redis."""

from __future__ import annotations

import asyncio
import math
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
# Answers the microseconds until the first slot (booked or, if none was, the next free one), how
# many were booked, and Redis's clock when it booked (microseconds).
_BOOK = """
local now_t = redis.call('TIME')
local now = tonumber(now_t[1]) * 1000000 + tonumber(now_t[2])
local interval = tonumber(ARGV[1])
local wanted = tonumber(ARGV[2])
local horizon = tonumber(ARGV[3])
local slot = tonumber(redis.call('GET', KEYS[1]) or '0')
if slot < now then slot = now end
if slot > now + horizon then return {slot - now, 0, now} end
local booked = math.min(wanted, math.floor((now + horizon - slot) / interval) + 1)
local after = slot + booked * interval
redis.call('SET', KEYS[1], after, 'PX', math.ceil((after - now) / 1000) + 1000)
return {slot - now, booked, now}
"""
# A horizon no booking reaches: the turn is taken however far ahead it is.
_ANY_HORIZON_US = 2**52

# Share of the lateness a spacing absorbs (see `Spacing`) that a woken turn may use.
LATE_SHARE = 0.8
DEFAULT_HEADROOM_PERCENT = 2
# How fast Redis's clock and ours may part between bookings: NTP slews each at most 500 ppm.
MAX_DRIFT = 0.001

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
    """Turns booked at once, on the pacer's clock: the n-th goes at `go_at(n)`, never before its
    slot, and is late by how long after `due(n)` it goes, never after its slot. With none booked,
    `due(0)` is when the next free slot is at the earliest."""

    booked: int
    first_go: float
    first_due: float
    interval_s: float

    def go_at(self, index: int) -> float:
        return self.first_go + index * self.interval_s

    def due(self, index: int) -> float:
        return self.first_due + index * self.interval_s


class RemoteClock:
    """Where Redis's clock (the one slots are booked on) stands against ours.

    Redis reads its clock after we ask and before its answer arrives, so each booking puts the
    offset (Redis's time minus ours) between `remote - answered` and `remote - asked`. Taken from
    one booking alone, an answer that waited in a busy event loop would make every turn it booked
    go that much after its slot and count that wait as lateness. The bounds of all bookings are
    intersected instead, each widened by how far the clocks may have drifted apart since; a booking
    that falls outside them (Redis's clock was stepped) starts them again. Over the wait for one
    slot the clocks are taken to keep pace, as the slots' spacing on Redis's clock already does.
    """

    def __init__(self, drift: float = MAX_DRIFT) -> None:
        self._drift = drift
        self._low = -math.inf
        self._high = math.inf
        self._at: float | None = None  # our time the bounds hold at

    def observe(self, asked: float, answered: float, remote: float) -> None:
        """Redis read `remote` on its clock while we waited from `asked` to `answered` (ours)."""
        at = answered if self._at is None else max(answered, self._at)
        read_within = self._drift * (at - asked)
        low, high = remote - answered - read_within, remote - asked + read_within
        if self._at is not None:
            aged = self._drift * (at - self._at)
            narrowed = max(low, self._low - aged), min(high, self._high + aged)
            if narrowed[0] <= narrowed[1]:
                low, high = narrowed
        self._low, self._high, self._at = low, high, at

    def local_span(self, remote: float) -> tuple[float, float]:
        """The earliest and the latest time on our clock at which Redis's clock reads `remote`."""
        if self._at is None:
            raise RuntimeError("no booking observed yet")
        return remote - self._high, remote - self._low


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
        self._remote = RemoteClock()
        self._book = redis.register_script(_BOOK)
        self._waits: dict[str, Any] = {}

    def limited(self, name: str) -> bool:
        return name in self._spacings

    def now(self) -> float:
        """The time turns are due and taken at (seconds on the pacer's monotonic clock)."""
        return self._clock()

    async def book(self, name: str, count: int, horizon_s: float | None = None) -> Booking:
        """Book up to `count` turns that start within `horizon_s` (None: however far ahead);
        `due(0)` is the next free turn's when none was booked."""
        spacing = self._spacings.get(name)
        if spacing is None:
            now = self.now()
            return Booking(count, now, now, 0.0)
        horizon_us = _ANY_HORIZON_US if horizon_s is None else int(horizon_s * 1_000_000)
        asked = self.now()
        first_us, booked, remote_us = await self._book(
            keys=[f"{self._namespace}:rate:{name}"], args=[spacing.interval_us, count, horizon_us]
        )
        self._remote.observe(asked, self.now(), int(remote_us) / 1_000_000)
        earliest, latest = self._remote.local_span((int(remote_us) + int(first_us)) / 1_000_000)
        return Booking(int(booked), latest, earliest, spacing.interval_s)

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
            booking = await self.book(name, 1)
            delay = booking.go_at(0) - self.now()
            if delay > 0:
                await asyncio.sleep(delay)
            if self.on_time(name, booking.due(0)):
                break
        self.waited(name, self.now() - started)
