"""Readiness follows what serving needs; every dependency shows in its own health entry and gauge.

Outages are network cuts: each dependency is reached through a loopback TCP relay to the real
server, and cutting the relay drops the connections and refuses new ones, as a partition does.
"""

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator
from urllib.parse import urlsplit, urlunsplit

import grpc
import prometheus_client
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from billing_common.grpc_client import open_channel
from billing_common.service import Dependency, Lifespan, Resources, ServiceParts
from billing_common.settings import CommonSettings
from billing_devtools.testing.echo import echo_registration, echo_stub
from billing_devtools.testing.plugin import InfraEnv, eventually, running_service

from .test_service_host import NO_MIGRATIONS

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class Relay:
    """A loopback port that forwards to a real server until it is cut."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self._original, self._target = url, (parts.hostname or "127.0.0.1", parts.port or 0)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self.port = 0

    def moved(self, url: str | None = None) -> str:
        """`url` (by default the relayed server's) pointing at the relay instead."""
        parts = urlsplit(url or self._original)
        credentials = parts.netloc.rsplit("@", 1)[0] + "@" if "@" in parts.netloc else ""
        return urlunsplit(parts._replace(netloc=f"{credentials}127.0.0.1:{self.port}"))

    async def open(self) -> None:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def cut(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        await self._server.wait_closed()

    async def _relay(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        try:
            server_reader, server_writer = await asyncio.open_connection(*self._target)
        except OSError:
            client_writer.transport.abort()
            return
        self._writers |= {client_writer, server_writer}
        try:
            await asyncio.gather(
                _pipe(client_reader, server_writer),
                _pipe(server_reader, client_writer),
                return_exceptions=True,
            )
        finally:
            for writer in (client_writer, server_writer):
                self._writers.discard(writer)
                writer.transport.abort()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()
    writer.transport.abort()


@contextlib.asynccontextmanager
async def relayed(url: str) -> AsyncIterator[Relay]:
    relay = Relay(url)
    await relay.open()
    try:
        yield relay
    finally:
        with contextlib.suppress(AssertionError, RuntimeError):
            await relay.cut()


def _lifespan(serving_needs: frozenset[Dependency]) -> Lifespan:
    @contextlib.asynccontextmanager
    async def lifespan(_resources: Resources) -> AsyncIterator[ServiceParts]:
        yield ServiceParts([echo_registration({"recurring"})], serving_needs=serving_needs)

    return lifespan


async def _health(port: int, entry: str) -> int:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=entry))
    return int(reply.status)


async def _status_is(port: int, entry: str, status: int) -> bool:
    try:
        return await _health(port, entry) == status
    except grpc.aio.AioRpcError as error:  # the entry appears with the first look at the dependencies
        if error.code() != grpc.StatusCode.NOT_FOUND:
            raise
        return False


def _gauge(service: str, dependency: Dependency) -> float | None:
    labels = {"service": service, "dependency": dependency.value}
    return prometheus_client.REGISTRY.get_sample_value("billing_dependency_up", labels)


async def test_a_broker_outage_keeps_the_service_serving_and_shows_in_its_health_entry_and_gauge(
    env: InfraEnv,
) -> None:
    async with relayed(env.infra.amqp_url) as broker:
        settings = env.settings(CommonSettings, "echo", amqp_url=broker.moved())
        async with running_service(
            settings, _lifespan(frozenset({Dependency.POSTGRESQL})), NO_MIGRATIONS
        ) as host:
            await eventually(lambda: _status_is(host.port, Dependency.RABBITMQ.health_entry, SERVING))

            await broker.cut()

            await eventually(lambda: _gauge("echo", Dependency.RABBITMQ) == 0, timeout=15)
            assert await _health(host.port, Dependency.RABBITMQ.health_entry) == NOT_SERVING
            assert await _health(host.port, "") == SERVING
            assert await _health(host.port, Dependency.POSTGRESQL.health_entry) == SERVING
            async with open_channel(f"127.0.0.1:{host.port}", env.token("recurring")) as channel:
                assert await echo_stub(channel)(b"still answering") == b"still answering"


async def test_a_database_outage_takes_the_service_out_of_rotation(env: InfraEnv) -> None:
    async with relayed(env.infra.postgres_admin_url) as database:
        settings = env.settings(CommonSettings, "echo")
        settings = dataclasses.replace(
            settings,
            database_url=database.moved(settings.database_url),
            db_admin_url=database.moved(settings.db_admin_url),
        )
        async with running_service(
            settings, _lifespan(frozenset({Dependency.POSTGRESQL})), NO_MIGRATIONS
        ) as host:
            await eventually(lambda: _status_is(host.port, "", SERVING), timeout=10)

            await database.cut()

            await eventually(lambda: _status_is(host.port, "", NOT_SERVING), timeout=15)
            assert await _health(host.port, Dependency.POSTGRESQL.health_entry) == NOT_SERVING
            assert _gauge("echo", Dependency.POSTGRESQL) == 0


@pytest.mark.parametrize(
    ("serving_needs", "expected"),
    [
        (frozenset({Dependency.POSTGRESQL, Dependency.REDIS}), NOT_SERVING),
        (frozenset({Dependency.POSTGRESQL}), SERVING),
    ],
    ids=["serves-from-redis", "does-not"],
)
async def test_a_redis_outage_takes_out_of_rotation_only_a_service_that_serves_from_redis(
    env: InfraEnv, serving_needs: frozenset[Dependency], expected: int
) -> None:
    async with relayed(env.infra.redis_url) as redis:
        settings = env.settings(CommonSettings, "echo", redis_url=redis.moved())
        async with running_service(settings, _lifespan(serving_needs), NO_MIGRATIONS) as host:
            await eventually(lambda: _status_is(host.port, Dependency.REDIS.health_entry, SERVING))

            await redis.cut()

            await eventually(
                lambda: _status_is(host.port, Dependency.REDIS.health_entry, NOT_SERVING), timeout=15
            )
            assert await _health(host.port, "") == expected
