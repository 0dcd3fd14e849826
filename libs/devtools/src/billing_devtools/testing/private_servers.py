"""Fixtures for fault tests: one server of the test's own (which it may stop or flush), the others shared.

Import the fixture into a test module (`from billing_devtools.testing.private_servers import
private_redis`); it yields an `InfraEnv` on the mixed servers and the private server itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator, Callable

import pytest

from billing_devtools.testing.infra import Infra
from billing_devtools.testing.plugin import InfraEnv
from billing_devtools.testing.servers import (
    PostgresCluster,
    RabbitMQNode,
    RedisServer,
    postgres_cluster,
    rabbitmq_node,
    redis_server,
)


@contextlib.asynccontextmanager
async def _mixed(infra: Infra, bring_back: Callable[[], None]) -> AsyncIterator[InfraEnv]:
    """An env on these servers; the private one is brought back at the end, so cleanup reaches it."""
    env = InfraEnv(infra)
    try:
        yield env
    finally:
        await asyncio.to_thread(bring_back)
        await env.cleanup()


def _started(server: PostgresCluster | RedisServer) -> Callable[[], None]:
    def bring_back() -> None:
        if not server.running:
            server.start()

    return bring_back


@pytest.fixture
async def private_postgres(infra: Infra) -> AsyncIterator[tuple[InfraEnv, PostgresCluster]]:
    with postgres_cluster() as cluster:
        mixed = dataclasses.replace(infra, postgres_admin_url=cluster.url("postgres"))
        async with _mixed(mixed, _started(cluster)) as env:
            yield env, cluster


@pytest.fixture
async def private_redis(infra: Infra) -> AsyncIterator[tuple[InfraEnv, RedisServer]]:
    with redis_server() as server:
        async with _mixed(dataclasses.replace(infra, redis_url=server.url), _started(server)) as env:
            yield env, server


@pytest.fixture
async def private_rabbitmq(infra: Infra) -> AsyncIterator[tuple[InfraEnv, RabbitMQNode]]:
    with rabbitmq_node() as node:
        async with _mixed(dataclasses.replace(infra, amqp_url=node.url), node.start_app) as env:
            yield env, node
