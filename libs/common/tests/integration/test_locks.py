import asyncio
from dataclasses import replace
from datetime import timedelta

import asyncpg
import pytest
from redis.asyncio import Redis

from billing_common import db
from billing_common.locks import RedisLocks
from billing_devtools.testing.plugin import InfraEnv
from billing_devtools.testing.servers import RedisServer

from .conftest import service_schema


async def _fenced_schema(env: InfraEnv, name: str) -> str:
    return await service_schema(env, name, "CREATE TABLE runs (day TEXT PRIMARY KEY, owner TEXT);")


@pytest.fixture
async def locks(env: InfraEnv):
    schema = await _fenced_schema(env, "recurring")
    pool = await env.pool(schema)
    redis = Redis.from_url(env.infra.redis_url)
    yield RedisLocks(redis, f"{env.run_id}:recurring", db.FencingTokens(pool))
    await redis.aclose()
    await pool.close()


async def test_only_one_holder_at_a_time_and_tokens_only_grow(locks: RedisLocks) -> None:
    first = await locks.try_acquire("daily:lock:2026-11-21", timedelta(seconds=5))
    assert first is not None
    assert await locks.try_acquire("daily:lock:2026-11-21", timedelta(seconds=5)) is None
    assert await locks.release(first)
    second = await locks.try_acquire("daily:lock:2026-11-21", timedelta(seconds=5))
    assert second is not None and second.fencing_token > first.fencing_token
    assert first.key.endswith(":recurring:daily:lock:2026-11-21")


async def test_a_held_lock_is_extended_beyond_its_ttl_and_released_after(locks: RedisLocks) -> None:
    async with locks.try_hold("monthly:lock:2026-11-30", timedelta(milliseconds=300)) as lease:
        assert lease is not None
        await asyncio.sleep(0.8)
        assert not lease.lost.is_set()
        async with locks.try_hold(
            "monthly:lock:2026-11-30", timedelta(seconds=1), wait=timedelta(milliseconds=300)
        ) as other:
            assert other is None
    assert await locks.try_acquire("monthly:lock:2026-11-30", timedelta(seconds=1)) is not None


async def test_many_locks_are_taken_at_once_where_free_kept_together_and_released_together(
    locks: RedisLocks,
) -> None:
    elsewhere = await locks.try_acquire("case:a", timedelta(seconds=5))
    assert elsewhere is not None
    async with locks.try_hold_many(["case:a", "case:b", "case:c"], timedelta(milliseconds=300)) as leases:
        assert sorted(leases) == ["case:b", "case:c"]  # "case:a" has another holder
        await asyncio.sleep(0.8)
        assert not any(lease.lost.is_set() for lease in leases.values())
        assert await locks.try_acquire("case:b", timedelta(seconds=1)) is None
        first_tokens = {name: lease.fencing_token for name, lease in leases.items()}
    async with locks.try_hold_many(["case:b", "case:c"], timedelta(seconds=1)) as again:
        assert all(again[name].fencing_token > token for name, token in first_tokens.items())


async def test_fencing_token_refuses_a_stale_holders_write(env: InfraEnv, locks: RedisLocks) -> None:
    schema = f"recurring_{env.run_id}"
    conn = await asyncpg.connect(db.dsn_with_user(env.infra.postgres_admin_url, schema))
    try:
        # A pauses long enough for its lock to expire; B takes over and writes.
        stale = await locks.try_acquire("daily:lock:2026-11-21", timedelta(milliseconds=100))
        assert stale is not None
        await asyncio.sleep(0.2)
        fresh = await locks.try_acquire("daily:lock:2026-11-21", timedelta(seconds=5))
        assert fresh is not None
        async with conn.transaction():
            await db.check_fence(conn, fresh)
            await conn.execute("INSERT INTO runs VALUES ('2026-11-21', 'B')")
        # A wakes up and tries to write: refused, and its whole transaction rolls back.
        with pytest.raises(db.StaleFencingToken):
            async with conn.transaction():
                await conn.execute("UPDATE runs SET owner = 'A' WHERE day = '2026-11-21'")
                await db.check_fence(conn, stale)
        assert await conn.fetchval("SELECT owner FROM runs") == "B"
        assert not await locks.extend(stale, timedelta(seconds=5))
    finally:
        await conn.close()


async def test_fences_checked_for_a_batch_refuse_only_the_stale_holders(
    env: InfraEnv, locks: RedisLocks
) -> None:
    schema = f"recurring_{env.run_id}"
    conn = await asyncpg.connect(db.dsn_with_user(env.infra.postgres_admin_url, schema))
    try:
        stale = await locks.try_acquire("case:x", timedelta(milliseconds=100))
        assert stale is not None
        await asyncio.sleep(0.2)
        fresh = await locks.try_acquire("case:x", timedelta(seconds=5))
        other = await locks.try_acquire("case:y", timedelta(seconds=5))
        assert fresh is not None and other is not None
        async with conn.transaction():
            await db.check_fence(conn, fresh)

        async with conn.transaction():
            assert await db.stale_fences(conn, [other, stale]) == [stale]
        with pytest.raises(db.StaleFencingToken):  # the batch recorded the holder it accepted
            await db.check_fence(conn, replace(other, fencing_token=other.fencing_token - 1))
    finally:
        await conn.close()


async def test_after_a_redis_flush_a_new_holder_writes_and_the_holder_before_it_is_refused(
    private_redis: tuple[InfraEnv, RedisServer],
) -> None:
    env, server = private_redis
    schema = await _fenced_schema(env, "tier")
    pool = await env.pool(schema)
    redis = Redis.from_url(server.url)
    locks = RedisLocks(redis, f"{env.run_id}:tier", db.FencingTokens(pool))
    try:
        for _ in range(3):
            lease = await locks.try_acquire("scan:full", timedelta(seconds=30))
            assert lease is not None
            async with db.transaction(pool) as conn:
                await db.check_fence(conn, lease)
            await locks.release(lease)
        paused = await locks.try_acquire("scan:full", timedelta(seconds=30))
        assert paused is not None

        await asyncio.to_thread(server.flush)  # every lock and counter in Redis is gone
        fresh = await locks.try_acquire("scan:full", timedelta(seconds=30))

        assert fresh is not None and fresh.fencing_token > paused.fencing_token
        async with db.transaction(pool) as conn:
            await db.check_fence(conn, fresh)
        with pytest.raises(db.StaleFencingToken):
            async with db.transaction(pool) as conn:
                await db.check_fence(conn, paused)
    finally:
        await redis.aclose()
        await pool.close()
