"""Where the test servers are: environment variables, the local defaults, or testcontainers."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

import aio_pika
import asyncpg
from redis.asyncio import Redis

from billing_common.db import quote_ident

DEFAULT_POSTGRES = "postgresql://postgres@127.0.0.1:5432/postgres"
DEFAULT_REDIS = "redis://127.0.0.1:6379/0"
DEFAULT_AMQP = "amqp://guest:guest@127.0.0.1:5672/"
TEST_DATABASE = "billing_test"


@dataclass(frozen=True)
class Infra:
    postgres_admin_url: str  # superuser, connected to the test database
    redis_url: str
    amqp_url: str


def _reachable(url: str) -> bool:
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 0), timeout=1):
            return True
    except OSError:
        return False


def _docker_available() -> bool:
    return shutil.which("docker") is not None and os.path.exists("/var/run/docker.sock")


@contextlib.contextmanager
def resolve_infra() -> Iterator[Infra]:
    """Each server from BILLING_TEST_*_URL, else the local default, else a container if Docker runs."""
    with contextlib.ExitStack() as stack:
        postgres = os.environ.get("BILLING_TEST_POSTGRES_URL", DEFAULT_POSTGRES)
        redis = os.environ.get("BILLING_TEST_REDIS_URL", DEFAULT_REDIS)
        amqp = os.environ.get("BILLING_TEST_AMQP_URL", DEFAULT_AMQP)
        if not _reachable(postgres) and _docker_available():
            from testcontainers.postgres import PostgresContainer

            container = stack.enter_context(PostgresContainer("postgres:16-alpine", driver=None))
            postgres = container.get_connection_url()
        if not _reachable(redis) and _docker_available():
            from testcontainers.redis import RedisContainer

            rc = stack.enter_context(RedisContainer("redis:7-alpine"))
            redis = f"redis://{rc.get_container_host_ip()}:{rc.get_exposed_port(6379)}/0"
        if not _reachable(amqp) and _docker_available():
            from testcontainers.rabbitmq import RabbitMqContainer

            mq = stack.enter_context(RabbitMqContainer("rabbitmq:3.13-alpine"))
            amqp = f"amqp://guest:guest@{mq.get_container_host_ip()}:{mq.get_exposed_port(5672)}/"
        yield Infra(postgres, redis, amqp)


async def drop_leftovers(
    postgres_admin_url: str,
    redis_url: str,
    amqp_url: str,
    *,
    schemas: Sequence[str],
    key_patterns: Sequence[str],
    queues: Sequence[str],
) -> None:
    """Drop what a test or an earlier `make run` left: the schemas (sessions still open as their
    roles are ended first), the Redis keys matching `key_patterns`, and the queues. Nothing there
    is no error."""
    conn = await asyncpg.connect(postgres_admin_url)
    try:
        await conn.execute("SET lock_timeout = '20s'")
        # A process may still hold a session (even one inside a transaction).
        await conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = ANY($1::text[])",
            list(schemas),
        )
        for schema in schemas:
            await conn.execute(f"DROP SCHEMA IF EXISTS {quote_ident(schema)} CASCADE")
    finally:
        await conn.close()
    redis = Redis.from_url(redis_url)
    try:
        for pattern in key_patterns:
            keys = [key async for key in redis.scan_iter(match=pattern, count=1000)]
            if keys:
                await redis.delete(*keys)
    finally:
        await redis.aclose()
    async with await aio_pika.connect(amqp_url) as connection:
        channel = await connection.channel()
        for queue in queues:
            await channel.queue_delete(queue)
