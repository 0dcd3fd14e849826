"""The private servers fault tests break: each serves, survives the fault it is given, and goes away."""

from __future__ import annotations

import aio_pika
import asyncpg
import pytest
from redis.asyncio import Redis

from billing_devtools.testing.servers import (
    POSTGRES_CONFIG_ROOT,
    outage,
    postgres_cluster,
    rabbitmq_node,
    redis_server,
)


async def _select_one(url: str) -> int:
    conn = await asyncpg.connect(url, timeout=5)
    try:
        return int(await conn.fetchval("SELECT 1"))
    finally:
        await conn.close()


@pytest.mark.timeout(120)
async def test_a_private_postgres_cluster_keeps_its_data_across_a_stop_and_a_crash_and_is_dropped_after() -> (
    None
):
    with postgres_cluster() as pg:
        conn = await asyncpg.connect(pg.url())
        await conn.execute("CREATE TABLE kept (n int); INSERT INTO kept VALUES (7)")
        await conn.close()
        async with outage(pg):
            assert not pg.running
            with pytest.raises(OSError):
                await _select_one(pg.url())
        pg.kill()
        pg.start()
        conn = await asyncpg.connect(pg.url())
        assert await conn.fetchval("SELECT n FROM kept") == 7
        await conn.close()
    with pytest.raises(OSError):
        await _select_one(pg.url())
    assert not (POSTGRES_CONFIG_ROOT / pg.version / pg.name).exists()  # the cluster is dropped


@pytest.mark.timeout(60)
async def test_a_private_redis_is_flushed_and_comes_back_empty_after_a_kill() -> None:
    with redis_server() as server:
        redis = Redis.from_url(server.url)
        await redis.set("k", "v")
        server.flush()
        assert await redis.get("k") is None
        await redis.set("k", "v")
        await redis.aclose()
        server.kill()
        server.start()
        redis = Redis.from_url(server.url)
        assert await redis.get("k") is None
        await redis.aclose()
    assert not server.running


@pytest.mark.timeout(180)
async def test_a_private_rabbitmq_node_refuses_connections_during_an_outage_and_keeps_its_queues() -> None:
    with rabbitmq_node() as node:
        connection = await aio_pika.connect(node.url)
        channel = await connection.channel()
        await channel.declare_queue("kept", durable=True)
        await connection.close()
        async with outage(node):
            with pytest.raises((ConnectionError, aio_pika.exceptions.AMQPConnectionError)):
                await aio_pika.connect(node.url, timeout=5)
        connection = await aio_pika.connect(node.url)
        channel = await connection.channel()
        await channel.declare_queue("kept", durable=True, passive=True)
        await connection.close()
        node.kill()
        assert not node.running
        node.start()
        connection = await aio_pika.connect(node.url)
        await connection.close()
    assert not node.running
