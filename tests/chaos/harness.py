"""The five services as real processes against a PostgreSQL cluster, Redis and RabbitMQ node of
their own, which the chaos test may kill, stop and flush without touching anyone else's servers."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import signal
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import IO, Any

import aio_pika
import asyncpg
import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from billing.recurring.v1 import recurring_pb2 as rpb
from billing_common import db
from billing_common.grpc_client import open_channel
from billing_common.settings import CommonSettings
from billing_devtools.testing.infra import Infra
from billing_devtools.testing.plugin import InfraEnv
from billing_devtools.testing.processes import RunningProcess, free_port, start_process
from billing_devtools.testing.servers import (
    PostgresCluster,
    RabbitMQNode,
    RedisServer,
    postgres_cluster,
    rabbitmq_node,
    redis_server,
)
from tests.integration.suite import CALLS, SERVICES

# Callees first, so that every service finds the ones it calls serving; each stage at once.
STAGES = [["quota", "gateway-adapter", "tier"], ["recurring"], ["dunning"]]
START_ORDER = [name for stage in STAGES for name in stage]
DATABASE = "billing"


@dataclass
class Servers:
    postgres: PostgresCluster
    redis: RedisServer
    rabbitmq: RabbitMQNode
    boot_seconds: float = 0.0
    # Service processes using these servers: any still alive when the servers go is killed first.
    tenants: set[int] = field(default_factory=set)

    def kill_tenants(self) -> None:
        for pid in self.tenants:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.tenants.clear()


@contextlib.contextmanager
def private_servers() -> Iterator[Servers]:
    """The three servers, started side by side (a RabbitMQ node takes seconds to boot)."""
    managers: list[contextlib.AbstractContextManager[Any]] = [
        postgres_cluster(),
        redis_server(),
        rabbitmq_node(),
    ]
    began = time.monotonic()
    with contextlib.ExitStack() as stack:
        with concurrent.futures.ThreadPoolExecutor(len(managers)) as pool:
            started = [pool.submit(manager.__enter__) for manager in managers]
        for manager, future in zip(managers, started, strict=True):
            if future.exception() is None:
                stack.push(manager.__exit__)
        for future in started:
            future.result()
        postgres, redis, rabbitmq = (future.result() for future in started)
        servers = Servers(postgres, redis, rabbitmq, time.monotonic() - began)
        stack.callback(servers.kill_tenants)
        yield servers


async def _create_database(postgres: PostgresCluster) -> None:
    conn = await asyncpg.connect(postgres.url("postgres"))
    try:
        await conn.execute(f"CREATE DATABASE {DATABASE}")
    finally:
        await conn.close()


@dataclass
class Service:
    """One service's process and everything needed to start it again exactly as before."""

    name: str
    settings: CommonSettings
    extra_env: dict[str, str]
    log: IO[bytes]
    process: RunningProcess | None = None
    starts: int = 0

    @property
    def package(self) -> str:
        return str(SERVICES[self.name][0])

    @property
    def prefix(self) -> str:
        return str(SERVICES[self.name][1])

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.settings.grpc_port}"


@dataclass
class ChaosSuite:
    servers: Servers
    env: InfraEnv
    services: dict[str, Service]
    channels: list[grpc.aio.Channel] = field(default_factory=list)
    # The test clock's time; a restarted recurring starts at the wall clock and is set back to it.
    test_time: datetime | None = None

    stubs: dict[tuple[str, str], Any] = field(default_factory=dict)

    def stub(self, service: str, caller: str = "operator") -> Any:
        """A stub on a channel that outlives restarts (the service keeps its port)."""
        if (service, caller) not in self.stubs:
            channel = open_channel(self.services[service].address, self.env.token(caller))
            self.channels.append(channel)
            self.stubs[service, caller] = SERVICES[service][2](channel)
        return self.stubs[service, caller]

    async def start(self, name: str) -> None:
        service = self.services[name]
        service.process = await start_process(
            service.package,
            service.prefix,
            service.settings,
            service.extra_env,
            output=service.log,
            # Generous: on a busy machine a service's imports alone can take a minute.
            ready_timeout=180,
        )
        service.starts += 1
        self.servers.tenants.add(service.process.process.pid)
        if name == "recurring" and self.test_time is not None:
            await self.set_clock(self.test_time)

    async def kill(self, name: str) -> None:
        """SIGKILL, as a crashed pod: no drain, no goodbye."""
        process = self.services[name].process
        assert process is not None
        await process.kill()
        self.servers.tenants.discard(process.process.pid)
        self.services[name].process = None

    async def stop(self, name: str) -> None:
        """SIGTERM, as a pod being replaced: it drains and exits."""
        process = self.services[name].process
        if process is not None:
            await process.terminate()
            self.servers.tenants.discard(process.process.pid)
            self.services[name].process = None

    async def set_clock(self, instant: datetime) -> None:
        request = rpb.SetClockRequest()
        request.now.FromDatetime(instant)
        # Right after a restart this channel may still be between reconnect attempts: wait for it.
        await self.stub("recurring").SetClock(request, timeout=30, wait_for_ready=True)
        self.test_time = instant

    def schema(self, service: str) -> str:
        return f"{service.replace('-', '_')}_{self.env.run_id}"

    @contextlib.asynccontextmanager
    async def admin(self) -> AsyncIterator[asyncpg.Connection]:
        """The superuser on the private cluster, for reading a service's tables as an auditor would."""
        conn = await asyncpg.connect(self.env.infra.postgres_admin_url)
        try:
            yield conn
        finally:
            await conn.close()

    def table(self, service: str, name: str) -> str:
        return f"{db.quote_ident(self.schema(service))}.{db.quote_ident(name)}"

    async def queue_depths(self) -> dict[str, int]:
        """Messages waiting in every service's queues (main, retry and dead-letter)."""
        depths: dict[str, int] = {}
        connection = await aio_pika.connect(self.env.infra.amqp_url, timeout=5)
        async with connection:
            channel = await connection.channel()
            for queue_name in self.env.queues:
                try:
                    queue = await channel.declare_queue(queue_name, passive=True)
                except aio_pika.exceptions.ChannelClosed:  # a service that consumes nothing has none
                    channel = await connection.channel()
                    continue
                depths[queue_name] = queue.declaration_result.message_count or 0
        return depths

    async def serving(self) -> dict[str, bool]:
        answers: dict[str, bool] = {}
        for name, service in self.services.items():
            async with grpc.aio.insecure_channel(service.address) as channel:
                try:
                    reply = await health_pb2_grpc.HealthStub(channel).Check(
                        health_pb2.HealthCheckRequest(service=""), timeout=5
                    )
                    answers[name] = reply.status == health_pb2.HealthCheckResponse.SERVING
                except grpc.aio.AioRpcError:
                    answers[name] = False
        return answers


def _wiring(name: str, ports: dict[str, int]) -> dict[str, str]:
    prefix = SERVICES[name][1]
    return {
        f"{prefix}_{callee.upper().replace('-', '_')}_ADDR": f"127.0.0.1:{ports[callee]}"
        for callee in CALLS.get(name, [])
    }


@contextlib.asynccontextmanager
async def chaos_suite(
    servers: Servers, log_dir: Path, tuning: dict[str, dict[str, str]]
) -> AsyncIterator[ChaosSuite]:
    """Every service started on a port it keeps across restarts, its log in `log_dir/<name>.log`."""
    await _create_database(servers.postgres)
    env = InfraEnv(Infra(servers.postgres.url(DATABASE), servers.redis.url, servers.rabbitmq.url))
    ports = {name: free_port() for name in START_ORDER}
    with contextlib.ExitStack() as logs:
        services = {
            name: Service(
                name,
                env.settings(
                    CommonSettings,
                    name,
                    grpc_port=ports[name],
                    # As deployed: a handler that fails (the database is down) is retried for 10 s.
                    event_retry_delay=timedelta(seconds=2),
                ),
                {**_wiring(name, ports), **tuning.get(name, {})},
                logs.enter_context((log_dir / f"{name}.log").open("ab")),
            )
            for name in START_ORDER
        }
        suite = ChaosSuite(servers, env, services)
        try:
            for stage in STAGES:
                await asyncio.gather(*(suite.start(name) for name in stage))
            yield suite
        finally:
            for channel in suite.channels:
                await channel.close()
            await asyncio.gather(*(suite.stop(name) for name in services))
