"""Fixtures for fault tests: one server of the test's own (which it may stop or flush), the others shared.

Import the fixture into a test module (`from billing_common.testing.private_servers import
private_redis`); it yields an `InfraEnv` on the mixed servers and the private server itself.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from billing_common.testing.infra import Infra
from billing_common.testing.plugin import InfraEnv
from billing_common.testing.servers import (
    PostgresCluster,
    RabbitMQNode,
    RedisServer,
    postgres_cluster,
    rabbitmq_node,
    redis_server,
)


@pytest.fixture
async def private_postgres(infra: Infra) -> AsyncIterator[tuple[InfraEnv, PostgresCluster]]:
    with postgres_cluster() as cluster:
        env = InfraEnv(Infra(cluster.url("postgres"), infra.redis_url, infra.amqp_url))
        try:
            yield env, cluster
        finally:
            if not cluster.running:
                await asyncio.to_thread(cluster.start)
            await env.cleanup()


@pytest.fixture
async def private_redis(infra: Infra) -> AsyncIterator[tuple[InfraEnv, RedisServer]]:
    with redis_server() as server:
        env = InfraEnv(Infra(infra.postgres_admin_url, server.url, infra.amqp_url))
        try:
            yield env, server
        finally:
            if not server.running:
                await asyncio.to_thread(server.start)
            await env.cleanup()


@pytest.fixture
async def private_rabbitmq(infra: Infra) -> AsyncIterator[tuple[InfraEnv, RabbitMQNode]]:
    with rabbitmq_node() as node:
        env = InfraEnv(Infra(infra.postgres_admin_url, infra.redis_url, node.url))
        try:
            yield env, node
        finally:
            await asyncio.to_thread(node.start_app)
            await env.cleanup()
