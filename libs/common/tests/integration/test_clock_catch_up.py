"""The suite clock's catch-up on real Redis and PostgreSQL: AdvanceClock says the suite caught up
only once every pod has done what came due, and names what is still running when time runs out."""

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
from redis.asyncio import Redis

from billing_common import db
from billing_common.suite_clock import ClockAgent, ClockControl, SharedClock
from billing_devtools.testing.plugin import InfraEnv, eventually
from billing_devtools.testing.servers import RedisServer

EVE = datetime(2031, 1, 1, 12, tzinfo=UTC)
DAY = timedelta(days=1)


async def _schema(env: InfraEnv, name: str) -> asyncpg.Pool:
    schema = f"{name}_{env.run_id}"
    env.schemas.append(schema)
    await db.provision(env.infra.postgres_admin_url, schema, schema)
    pool = await env.pool(schema)
    async with pool.acquire() as conn:
        await db.migrate(conn, schema, db.common_migrations())
    return pool


@contextlib.asynccontextmanager
async def pod(
    env: InfraEnv,
    service: str,
    due: Callable[[asyncpg.Pool, datetime], Awaitable[Mapping[str, int]]],
    clock: SharedClock | None = None,
) -> AsyncIterator[asyncpg.Pool]:
    """One pod of `service` on the test's clock, reporting what `due` says it has due."""
    pool = await _schema(env, service.replace("-", "_"))
    redis = Redis.from_url(env.infra.redis_url)
    agent = ClockAgent(clock or SharedClock(), pool, redis, f"{env.run_id}:test-clock", service)
    agent.watch([lambda now: due(pool, now)])
    await agent.resume()
    task = asyncio.create_task(agent.run())
    try:
        yield pool
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await pool.close()
        await redis.aclose()


@pytest.fixture
async def control(env: InfraEnv) -> AsyncIterator[ClockControl]:
    redis = Redis.from_url(env.infra.redis_url)
    clock = ClockControl(SharedClock(), redis, f"{env.run_id}:test-clock")
    await clock.set(EVE)
    yield clock
    await redis.aclose()


async def _wrote_events(pool: asyncpg.Pool) -> int:
    return int(await pool.fetchval("SELECT count(*) FROM outbox"))


async def test_setting_the_clock_answers_once_a_pod_busy_counting_its_work_stands_at_the_new_instant(
    env: InfraEnv, control: ClockControl
) -> None:
    """The move is announced while the pod is counting its due work; a caller asking that pod the
    time right after SetClock answers must still get the new instant."""
    counting = asyncio.Event()

    async def slow_to_count(pool: asyncpg.Pool, now: datetime) -> Mapping[str, int]:
        counting.set()
        await asyncio.sleep(0.5)
        return {}

    clock = SharedClock()
    async with pod(env, "recurring", slow_to_count, clock):
        assert clock.now() == EVE
        await eventually(control.reports)  # the pod has reported once: the suite knows it
        counting.clear()
        await counting.wait()
        await control.set(EVE + DAY)
        assert clock.now() == EVE + DAY


async def test_a_pod_that_keeps_handing_work_on_is_not_caught_up_until_it_has_finished(
    env: InfraEnv, control: ClockControl
) -> None:
    """Each time it is asked, the pod finishes one piece of the day's work and hands it on as an
    event, already relayed: no answer ever shows work due, only its progress does."""
    pieces = 5

    async def hands_on_one_piece(pool: asyncpg.Pool, now: datetime) -> Mapping[str, int]:
        if now >= EVE + DAY and await _wrote_events(pool) < pieces:
            await pool.execute(
                """INSERT INTO outbox (event_id, event_type, payload, published_at)
                   VALUES (gen_random_uuid(), 'invoice.paid', ''::bytea, now())"""
            )
        return {}

    async with pod(env, "dunning", hands_on_one_piece) as pool:
        caught_up = await control.advance(DAY, DAY, timedelta(seconds=30))
        assert caught_up.caught_up and caught_up.now == EVE + DAY
        assert await _wrote_events(pool) == pieces


async def test_work_set_going_where_the_clock_stands_is_done_there_before_the_clock_moves(
    env: InfraEnv, control: ClockControl
) -> None:
    """Like a scan's tier changes reported just before AdvanceClock: moving on under them would
    apply them a day late. Each piece records the instant it was done at."""
    pieces = 3
    going = asyncio.Event()

    async def hands_on_one_piece(pool: asyncpg.Pool, now: datetime) -> Mapping[str, int]:
        if going.is_set() and await _wrote_events(pool) < pieces:
            await pool.execute(
                """INSERT INTO outbox (event_id, event_type, payload, published_at, created_at)
                   VALUES (gen_random_uuid(), 'tier.changed', ''::bytea, now(), $1)""",
                now,
            )
        return {}

    async with pod(env, "tier", hands_on_one_piece) as pool:
        going.set()
        moved = await control.advance(DAY, DAY, timedelta(seconds=30))
        assert moved.caught_up and moved.now == EVE + DAY
        done_at = [r["created_at"] for r in await pool.fetch("SELECT created_at FROM outbox")]
        assert done_at == [EVE] * pieces


async def test_a_pod_with_work_due_holds_the_advance_and_is_named_when_time_runs_out(
    env: InfraEnv, control: ClockControl
) -> None:
    async def idle(_pool: asyncpg.Pool, _now: datetime) -> Mapping[str, int]:
        return {"open run items": 0}

    async def stuck(_pool: asyncpg.Pool, now: datetime) -> Mapping[str, int]:
        return {"due dunning attempts": 2 if now >= EVE + DAY else 0}

    async with pod(env, "recurring", idle), pod(env, "dunning", stuck):
        stopped = await control.advance(2 * DAY, DAY, timedelta(seconds=2))

    assert not stopped.caught_up and stopped.now == EVE + DAY
    assert len(stopped.still_running) == 1
    assert stopped.still_running[0].startswith("dunning (")
    assert stopped.still_running[0].endswith("): due dunning attempts 2")


async def test_the_pods_reports_are_found_without_scanning_redis(
    private_redis: tuple[InfraEnv, RedisServer],
) -> None:
    """A SCAN walks every key of a Redis the suite shares (locks, counters, idempotency keys): each
    round of every advance paid for it. The reports are listed in a set of their own, and a
    pod that stopped leaves it."""
    env, server = private_redis
    redis = Redis.from_url(server.url)
    control = ClockControl(SharedClock(), redis, f"{env.run_id}:test-clock")
    try:
        await control.set(EVE)
        await redis.config_resetstat()
        async with pod(env, "recurring", _nothing_due), pod(env, "dunning", _nothing_due):
            moved = await control.advance(DAY, DAY, timedelta(seconds=30))
            assert moved.caught_up
            assert {r.service for r in await control.reports()} == {"recurring", "dunning"}
        assert await control.reports() == []
        assert "cmdstat_scan" not in await redis.info("commandstats")
    finally:
        await redis.aclose()


async def _nothing_due(_pool: asyncpg.Pool, _now: datetime) -> Mapping[str, int]:
    return {}
