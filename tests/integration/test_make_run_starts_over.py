"""`make run RESET=1`: what earlier runs left is dropped before the services start, and only that."""

from __future__ import annotations

import aio_pika
import asyncpg
from redis.asyncio import Redis

from billing_common import db
from billing_devtools.devrun import start_over
from billing_devtools.testing.plugin import InfraEnv


async def _queue_exists(amqp_url: str, queue: str) -> bool:
    async with await aio_pika.connect(amqp_url) as connection:
        channel = await connection.channel()
        try:
            await channel.declare_queue(queue, passive=True)
        except aio_pika.exceptions.ChannelClosed:
            return False
        return True


async def test_starting_over_drops_the_services_schemas_keys_queues_and_clock_and_nothing_else(
    env: InfraEnv,
) -> None:
    service, other = f"svc-{env.run_id}", f"other-{env.run_id}"
    schemas = [name.replace("-", "_") for name in (service, other)]
    env.schemas += schemas
    queues = [f"{name}.events{suffix}" for name in (service, other) for suffix in ("", ".retry", ".dlq")]
    env.queues += queues
    clock_key = f"billing:test-clock:{env.run_id}"
    admin = await asyncpg.connect(env.infra.postgres_admin_url)
    redis = Redis.from_url(env.infra.redis_url)
    try:
        for schema in schemas:
            await admin.execute(f"CREATE SCHEMA {db.quote_ident(schema)}")
            await admin.execute(f"CREATE TABLE {db.quote_ident(schema)}.invoices (id TEXT PRIMARY KEY)")
            await admin.execute(f"INSERT INTO {db.quote_ident(schema)}.invoices VALUES ('inv_1')")
        for name in (service, other):
            await redis.set(f"{name}:usage:acme", 7)
            await redis.set(f"{name}:lock:daily", "pod-a")
        await redis.set(clock_key, "2031-05-05T00:00:00+00:00")
        async with await aio_pika.connect(env.infra.amqp_url) as connection:
            channel = await connection.channel()
            for queue in queues:
                await channel.declare_queue(queue, durable=True)

        await start_over(
            env.infra.postgres_admin_url, env.infra.redis_url, env.infra.amqp_url, [service], clock_key
        )

        left = await admin.fetch("SELECT nspname FROM pg_namespace WHERE nspname = ANY($1::text[])", schemas)
        assert [row["nspname"] for row in left] == [schemas[1]]
        assert sorted([key.decode() async for key in redis.scan_iter(match=f"*-{env.run_id}:*")]) == [
            f"{other}:lock:daily",
            f"{other}:usage:acme",
        ]
        assert await redis.exists(clock_key) == 0
        kept = [await _queue_exists(env.infra.amqp_url, queue) for queue in queues]
        assert kept == [False, False, False, True, True, True]
    finally:
        await redis.delete(*[f"{other}:usage:acme", f"{other}:lock:daily"])
        await redis.aclose()
        await admin.close()


async def test_starting_over_with_nothing_left_to_drop_succeeds(env: InfraEnv) -> None:
    """A second RESET=1, or one on a fresh machine: nothing to drop is no error."""
    service = f"svc-{env.run_id}"
    env.queues += [f"{service}.events{suffix}" for suffix in ("", ".retry", ".dlq")]
    clock_key = f"billing:test-clock:{env.run_id}"
    infra = env.infra
    for _ in range(2):
        await start_over(infra.postgres_admin_url, infra.redis_url, infra.amqp_url, [service], clock_key)
