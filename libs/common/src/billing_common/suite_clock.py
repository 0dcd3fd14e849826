"""The suite's test clock: one instant for every service and every pod, moved from one place.

Enabled by `<PREFIX>_TEST_CLOCK=true` (never in production: the prod overlay's check refuses it).
Until the clock is first set, it reads wall time; once set, it stands still at its instant until
it is moved again, forward only.

Where the instant lives: the latest instant is a Redis key (`TEST_CLOCK_KEY`), shared by the
suite; each pod that applies an instant also keeps it in its own schema's `suite_clock` row (a
role never reads another's schema), so a restarted pod, or a Redis that lost the key, resumes
from the later of the two. A move is announced on the Redis channel of the same name, which wakes
every pod at once; the pods also read the key every report interval, so an announcement missed
during a reconnect is applied a moment later.
A part of the suite that only shows the time (the console) follows the key with a `ClockReader`:
it keeps and reports nothing, so an advance never waits for it.

Catching up: each pod keeps, under `<key>:pod:<service>:<pod>` with a short expiry (listed in the
set `<key>:pods`, so that finding the reports never scans Redis's keys), a report of
the instant it runs on and the work it still has due at that instant (unrelayed outbox rows,
events waiting in its queues or being handled, and the service's own due work, e.g. open run items
or due dunning attempts), with a mark of its progress (the last event it wrote, the events it has
handled). `ClockControl.advance` moves the clock a step at a time; for each step it asks every pod,
on `<key>:ask`, for a fresh report and gathers the answers from `<key>:reports`. The suite has
caught up with an instant when two rounds of answers, one asked after the other had all come in,
find every live pod at that instant with nothing due and no progress in between: work handed from
one pod to another between two answers shows as due work in the second or as progress. Nothing
waits out a timer: a round takes as long as the pods' answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import asyncpg
from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.exceptions import RedisError

from billing_common.clock import Clock, SystemClock

log = logging.getLogger(__name__)

# How often a pod reports unasked: it keeps its report alive and follows an announcement it missed
# (a move wakes it at once, and rounds are asked, so nothing waits for this).
REPORT_INTERVAL = timedelta(seconds=1)
# A pod that stopped reporting for this long is gone (its report expires).
REPORT_LIFETIME = timedelta(seconds=10)
# After a round that found work due, the next round is asked this much later, twice as late after
# each further busy round up to the longest: a short day ends soon after its work, a long one is not
# slowed by rounds that make every pod count its work many times a second.
ROUND_PAUSES = (timedelta(milliseconds=25), timedelta(milliseconds=160))
# A round whose answers have not all come in by then is asked again.
ROUND_PATIENCE = timedelta(seconds=2)
# How long setting the clock waits for every pod to say it stands at the new instant.
STANDING_PATIENCE = timedelta(seconds=10)
# The test clock stays before this instant: dates near 9999 overflow.
CLOCK_END = datetime(3000, 1, 1, tzinfo=UTC)

# Counts of work that is due and not yet done, by kind (`open run items`: 12).
DueWork = Callable[[datetime], Awaitable[Mapping[str, int]]]

# Moves the key forward only, atomically: ISO-8601 UTC strings of one format compare as instants.
_MOVE_FORWARD = """
local current = redis.call('GET', KEYS[1])
if current and current >= ARGV[1] then return current end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('PUBLISH', KEYS[1], ARGV[1])
return ARGV[1]
"""


class ClockRefused(ValueError):
    """The move was refused (backwards, or past the clock's end); the clock did not move."""


class SharedClock:
    """The suite's clock as one pod reads it: wall time until set, then the suite's instant."""

    def __init__(self, wall: Clock | None = None) -> None:
        self._wall = wall or SystemClock()
        self._instant: datetime | None = None
        self._moved = asyncio.Event()

    def now(self) -> datetime:
        return self._instant if self._instant is not None else self._wall.now()

    @property
    def instant(self) -> datetime | None:
        """The suite's instant, or None while the clock has never been set."""
        return self._instant

    def move_to(self, instant: datetime) -> bool:
        """Stand at `instant` if it is later than where the clock stands; wakes every `pause`."""
        if self._instant is not None and instant <= self._instant:
            return False
        self._instant = instant.astimezone(UTC)
        moved, self._moved = self._moved, asyncio.Event()
        moved.set()
        return True

    async def sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._moved.wait(), seconds)


async def pause(clock: Clock, seconds: float) -> None:
    """Wait `seconds` of wall time, or less when the suite's test clock moves meanwhile: a loop
    that waits for a due time sees the new time at once."""
    if isinstance(clock, SharedClock):
        await clock.sleep(seconds)
    else:
        await asyncio.sleep(seconds)


def _encode(instant: datetime) -> str:
    return instant.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _decode(text: bytes | str | None) -> datetime | None:
    if not text:
        return None
    raw = text.decode() if isinstance(text, bytes) else text
    return datetime.strptime(raw, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)


@dataclass(frozen=True)
class PodReport:
    service: str
    pod: str
    instant: datetime | None
    due: Mapping[str, int]
    at: datetime
    # The round this report answers ("" when the pod reported unasked) and the pod's progress mark.
    round: str = ""
    progress: tuple[int, ...] = ()

    @property
    def busy(self) -> bool:
        return any(self.due.values())

    def to_json(self) -> str:
        return json.dumps(
            {
                "service": self.service,
                "pod": self.pod,
                "instant": _encode(self.instant) if self.instant else None,
                "due": dict(self.due),
                "at": _encode(self.at),
                "round": self.round,
                "progress": list(self.progress),
            }
        )

    @classmethod
    def from_json(cls, text: bytes | str) -> PodReport:
        raw = json.loads(text)
        return cls(
            raw["service"],
            raw["pod"],
            _decode(raw["instant"]),
            raw["due"],
            _decode(raw["at"]) or datetime.min.replace(tzinfo=UTC),
            raw.get("round", ""),
            tuple(raw.get("progress", ())),
        )


def round_is_quiet(
    instant: datetime, answers: Mapping[str, PodReport], earlier: Mapping[str, PodReport]
) -> bool:
    """Whether a round of answers (by pod) shows the suite caught up with `instant`: every pod is
    there with nothing due, and each made no progress since the `earlier` round, which was quiet
    too and had the same pods (a pod that appeared or moved on may have taken work over)."""
    if not answers or answers.keys() != earlier.keys():
        return False
    for pod, answer in answers.items():
        before = earlier[pod]
        if answer.instant != instant or answer.busy or before.instant != instant or before.busy:
            return False
        if answer.progress != before.progress:
            return False
    return True


class ClockAgent:
    """Keeps one pod on the suite's instant and reports what the pod still has due."""

    def __init__(
        self,
        clock: SharedClock,
        pool: asyncpg.Pool,
        redis: Redis,
        key: str,
        service: str,
    ) -> None:
        self._clock = clock
        self._pool = pool
        self._redis = redis
        self._key = key
        self._service = service
        self._pod = f"{os.environ.get('HOSTNAME') or socket.gethostname()}-{uuid.uuid4().hex[:8]}"
        self._report_key = f"{key}:pod:{service}:{self._pod}"
        self._pods_key = f"{key}:pods"
        self._due_work: list[DueWork] = []
        self._kept: datetime | None = None

    def watch(self, due_work: list[DueWork]) -> None:
        """What this pod reports as still due (set once the service's parts are built)."""
        self._due_work = due_work

    async def resume(self) -> None:
        """At start: the later of this schema's kept instant and the suite's announced one."""
        kept = self._kept = await self._pool.fetchval("SELECT instant FROM suite_clock")
        announced = _decode(await self._redis.get(self._key))
        for instant in (kept, announced):
            if instant is not None:
                self._clock.move_to(instant)
        if self._clock.instant is not None:
            log.info("test clock resumed", extra={"instant": self._clock.instant.isoformat()})

    async def run(self) -> None:
        pubsub = self._redis.pubsub()
        await pubsub.subscribe(self._key, f"{self._key}:ask")
        try:
            asked = ""
            while True:
                await self._follow()
                await self._report(asked)
                asked = ""
                with contextlib.suppress(TimeoutError):
                    message = await pubsub.get_message(
                        ignore_subscribe_messages=True, timeout=REPORT_INTERVAL.total_seconds()
                    )
                    if message is not None and message["channel"] == f"{self._key}:ask".encode():
                        asked = message["data"].decode()
        finally:
            with contextlib.suppress(Exception):
                await pubsub.aclose()  # type: ignore[no-untyped-call]
            # A pod that stops says so at once, rather than count as behind until its report expires.
            with contextlib.suppress(Exception):
                await self._redis.delete(self._report_key)
                await self._redis.srem(self._pods_key, self._report_key)

    async def _follow(self) -> None:
        announced = _decode(await self._redis.get(self._key))
        if announced is not None:
            self._clock.move_to(announced)
        instant = self._clock.instant
        if instant is not None and instant != self._kept:
            await self._pool.execute(
                """INSERT INTO suite_clock (instant) VALUES ($1)
                   ON CONFLICT (singleton) DO UPDATE SET instant = GREATEST(suite_clock.instant, $1)""",
                instant,
            )
            self._kept = instant

    async def _report(self, asked: str) -> None:
        """Report the pod's due work, fresh; an answer to a round is also published at once."""
        instant = self._clock.instant
        due: dict[str, int] = {}
        if instant is not None:
            for work in self._due_work:
                due.update(await work(instant))
        # The last event this pod wrote and how many it has handled: both only grow while it works.
        progress = await self._pool.fetchrow(
            """SELECT (SELECT coalesce(max(id), 0) FROM outbox) AS written,
                      (SELECT count(*) FROM inbox) AS handled"""
        )
        assert progress is not None  # a row of scalar subqueries always exists
        report = PodReport(
            self._service,
            self._pod,
            instant,
            due,
            datetime.now(UTC),
            asked,
            (int(progress["written"]), int(progress["handled"])),
        ).to_json()
        lifetime = int(REPORT_LIFETIME.total_seconds() * 1000)
        # The list of reports lives as long as the latest one: a suite whose pods all stopped leaves none.
        async with self._redis.pipeline(transaction=True) as listed:
            listed.set(self._report_key, report, px=lifetime)
            listed.sadd(self._pods_key, self._report_key)
            listed.pexpire(self._pods_key, lifetime)
            await listed.execute()
        if asked:
            await self._redis.publish(f"{self._key}:reports", report)


class ClockReader:
    """Keeps a clock on the suite's announced instant, for a part of the suite that only shows the
    time and has no schema of its own (the console): it keeps no instant, reports no work, and so
    is never waited for by an advance. Before the clock is first set, it reads wall time."""

    def __init__(self, clock: SharedClock, redis: Redis, key: str) -> None:
        self._clock = clock
        self._redis = redis
        self._key = key

    async def follow(self) -> None:
        announced = _decode(await self._redis.get(self._key))
        if announced is not None:
            self._clock.move_to(announced)

    async def run(self) -> None:
        """Follow each announcement at once, and read the key every report interval (an
        announcement missed while Redis was away is applied a moment later)."""
        while True:
            pubsub = self._redis.pubsub()
            try:
                await pubsub.subscribe(self._key)
                while True:
                    await self.follow()
                    with contextlib.suppress(TimeoutError):
                        await pubsub.get_message(
                            ignore_subscribe_messages=True, timeout=REPORT_INTERVAL.total_seconds()
                        )
            except RedisError:
                log.warning("test clock: Redis unreachable, following again shortly", exc_info=True)
                await asyncio.sleep(REPORT_INTERVAL.total_seconds())
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]


@dataclass(frozen=True)
class CatchUp:
    """Where an advance ended, whether the suite caught up, and what was still due if not."""

    now: datetime
    caught_up: bool
    still_running: list[str]


class ClockControl:
    """The one place the suite's clock is set and advanced (behind an admin RPC)."""

    def __init__(self, clock: SharedClock, redis: Redis, key: str) -> None:
        self._clock = clock
        self._redis = redis
        self._key = key
        self._move_forward = redis.register_script(_MOVE_FORWARD)

    async def current(self) -> datetime:
        announced = _decode(await self._redis.get(self._key))
        return max(filter(None, (announced, self._clock.instant)), default=self._clock.now())

    async def set(self, instant: datetime) -> datetime:
        """Stand the whole suite at `instant`, at once (nothing in between is stepped through); answers
        once every live pod stands there, so a caller may ask any pod the time right after."""
        stored = await self._move_to(instant)
        await self._wait_standing(stored)
        return stored

    async def _move_to(self, instant: datetime) -> datetime:
        instant = instant.astimezone(UTC)
        if instant >= CLOCK_END:
            raise ClockRefused("would move the test clock past 3000-01-01")
        if instant < await self.current():
            raise ClockRefused("a clock never moves backwards")
        stored = _decode(await self._move_forward(keys=[self._key], args=[_encode(instant)]))
        assert stored is not None
        self._clock.move_to(stored)
        return stored

    async def advance(self, by: timedelta, step: timedelta, timeout: timedelta) -> CatchUp:
        """Move forward `by`, a `step` at a time, once the suite has caught up where it stands and
        then at each step until every pod has done what came due; stops early, reporting what is
        still running, when `timeout` runs out."""
        if by <= timedelta(0):
            raise ClockRefused("a clock never moves backwards")
        start = await self.current()
        target = start + by
        if target >= CLOCK_END:
            raise ClockRefused("would move the test clock past 3000-01-01")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout.total_seconds()
        # What callers set going where the clock stands (usage, signals, a scan's tier changes) is
        # done there first: moving on under it would apply it a day late. (A clock never set yet
        # has no pods standing anywhere.)
        if _decode(await self._redis.get(self._key)) is not None:
            still_running = await self.wait_caught_up(start, deadline)
            if still_running:
                return CatchUp(start, False, still_running)
        now = start
        while now < target:
            began = loop.time()
            now = await self._move_to(min(now + step, target))
            still_running = await self.wait_caught_up(now, deadline)
            log.info(
                "test clock step",
                extra={
                    "instant": now.isoformat(),
                    "seconds": round(loop.time() - began, 3),
                    "caught_up": not still_running,
                },
            )
            if still_running:
                return CatchUp(now, False, still_running)
        return CatchUp(now, True, [])

    async def _wait_standing(self, instant: datetime) -> None:
        """Until a round of answers finds every live pod at `instant` (an answer is written after the
        pod has followed the clock); a pod that does not answer within STANDING_PATIENCE follows
        the clock at its next report and is logged."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + STANDING_PATIENCE.total_seconds()
        pubsub = self._redis.pubsub()
        await pubsub.subscribe(f"{self._key}:reports")
        try:
            while await self.reports():
                until = min(deadline, loop.time() + ROUND_PATIENCE.total_seconds())
                answers = await self._ask_round(pubsub, until)
                if answers is not None and all(
                    a.instant is not None and a.instant >= instant for a in answers.values()
                ):
                    return
                if loop.time() >= deadline:
                    log.warning(
                        "test clock set; not every pod has answered yet",
                        extra={"instant": instant.isoformat()},
                    )
                    return
        finally:
            with contextlib.suppress(Exception):
                await pubsub.aclose()  # type: ignore[no-untyped-call]

    async def wait_caught_up(self, instant: datetime, deadline: float) -> list[str]:
        """Empty once two rounds of answers, one asked after the other, show every live pod at
        `instant` with nothing due and no progress in between (`round_is_quiet`); otherwise, at
        the deadline, what each pod still had due."""
        loop = asyncio.get_running_loop()
        pubsub = self._redis.pubsub()
        await pubsub.subscribe(f"{self._key}:reports")
        try:
            earlier: dict[str, PodReport] = {}
            latest: list[PodReport] = []
            shortest, longest = (p.total_seconds() for p in ROUND_PAUSES)
            pause = shortest
            while loop.time() < deadline:
                answers = await self._ask_round(
                    pubsub, min(deadline, loop.time() + ROUND_PATIENCE.total_seconds())
                )
                if answers is not None and round_is_quiet(instant, answers, earlier):
                    return []
                quiet = answers is not None and all(
                    a.instant == instant and not a.busy for a in answers.values()
                )
                earlier = answers if answers is not None and quiet else {}
                latest = list(answers.values()) if answers is not None else await self.reports()
                if quiet:
                    pause = shortest
                else:
                    await asyncio.sleep(pause)
                    pause = min(pause * 2, longest)
            behind = [r for r in latest if r.instant != instant or r.busy]
            return [_describe(r, instant) for r in behind] or ["waiting for the pods' answers"]
        finally:
            with contextlib.suppress(Exception):
                await pubsub.aclose()  # type: ignore[no-untyped-call]

    async def _ask_round(self, pubsub: PubSub, until: float) -> dict[str, PodReport] | None:
        """Ask every pod for a fresh report: the answers by pod once every live pod answered (a
        pod that is gone stops counting when its report expires), or None at `until`."""
        loop = asyncio.get_running_loop()
        asked = uuid.uuid4().hex
        await self._redis.publish(f"{self._key}:ask", asked)
        answers: dict[str, PodReport] = {}
        while True:
            live = {r.pod for r in await self.reports()}
            if live and live <= answers.keys():
                return answers
            left = until - loop.time()
            if left <= 0:
                return None
            with contextlib.suppress(TimeoutError):
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=min(left, 0.5))
                if message is not None:
                    report = PodReport.from_json(message["data"])
                    if report.round == asked:
                        answers[report.pod] = report

    async def reports(self) -> list[PodReport]:
        """The pods' latest reports, asked or not: who is live, and where each stood. A pod whose
        report expired is gone, and leaves the list."""
        keys = sorted(await self._redis.smembers(f"{self._key}:pods"))
        values = await self._redis.mget(keys) if keys else []
        gone = [key for key, value in zip(keys, values, strict=True) if value is None]
        if gone:
            await self._redis.srem(f"{self._key}:pods", *gone)
        return [PodReport.from_json(value) for value in values if value is not None]


def _describe(report: PodReport, instant: datetime) -> str:
    if report.instant != instant:
        return f"{report.service} ({report.pod}): still at {report.instant}"
    due = ", ".join(f"{kind} {count}" for kind, count in sorted(report.due.items()) if count)
    return f"{report.service} ({report.pod}): {due}"


def outbox_due(pool: asyncpg.Pool) -> DueWork:
    """Events this service wrote and has not yet handed to the broker."""

    async def due(_now: datetime) -> Mapping[str, int]:
        count = await pool.fetchval("SELECT count(*) FROM outbox WHERE published_at IS NULL")
        return {"unrelayed events": int(count)}

    return due
