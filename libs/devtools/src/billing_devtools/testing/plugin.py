"""pytest fixtures: every test gets its own schemas, login roles, Redis keys and exchange."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import secrets
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import aio_pika
import asyncpg
import pytest
from google.protobuf.message import Message

from billing_common import db, tokens
from billing_common.clock import Clock
from billing_common.events import event_class, event_type_of
from billing_common.service import Lifespan, ServiceHost
from billing_common.settings import CommonSettings
from billing_devtools.testing.infra import TEST_DATABASE, Infra, drop_leftovers, resolve_infra
from billing_devtools.testing.otlp import OtlpReceiver, otlp_receiver

S = TypeVar("S", bound=CommonSettings)


@functools.cache
def session_signing_key() -> tokens.SigningKey:
    """This test session's issuer key; its services are given the public half only."""
    return tokens.SigningKey.generate()


def issue_token(caller: str, lifetime: timedelta | None = None) -> str:
    """A token of this test session's issuer."""
    return tokens.issue(session_signing_key(), caller, lifetime)


PAGE_TOKEN_KEY = "test-only-page-token-key-not-a-secret"


def _with_database(url: str, database: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{database}", parts.query, parts.fragment))


async def _ensure_database(admin_url: str, database: str = TEST_DATABASE) -> None:
    conn = await asyncpg.connect(admin_url)
    try:
        if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", database):
            with contextlib.suppress(asyncpg.DuplicateDatabaseError, asyncpg.UniqueViolationError):
                await conn.execute(f"CREATE DATABASE {database}")
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def infra() -> Iterator[Infra]:
    with resolve_infra() as found:
        asyncio.run(_ensure_database(found.postgres_admin_url))
        yield Infra(_with_database(found.postgres_admin_url, TEST_DATABASE), found.redis_url, found.amqp_url)


@dataclass
class InfraEnv:
    """One test's private corner of the shared servers; everything it made is removed after."""

    infra: Infra
    run_id: str = field(default_factory=lambda: "t" + secrets.token_hex(4))
    schemas: list[str] = field(default_factory=list)
    queues: list[str] = field(default_factory=list)

    @property
    def exchange(self) -> str:
        return f"billing.events.{self.run_id}"

    def token(self, caller: str, lifetime: timedelta | None = None) -> str:
        return issue_token(caller, lifetime)

    @property
    def jwks(self) -> str:
        return session_signing_key().jwks()

    def settings(self, cls: type[S], service_name: str, **overrides: Any) -> S:
        schema = f"{service_name.replace('-', '_')}_{self.run_id}"
        if schema not in self.schemas:
            self.schemas.append(schema)
            queue_prefix = f"{service_name}.{self.run_id}"
            self.queues += [f"{queue_prefix}.events{suffix}" for suffix in ("", ".retry", ".dlq")]
        values: dict[str, Any] = {
            "service_name": service_name,
            "database_url": db.dsn_with_user(self.infra.postgres_admin_url, schema),
            "db_admin_url": self.infra.postgres_admin_url,
            "db_schema": schema,
            "redis_url": self.infra.redis_url,
            "redis_namespace": f"{self.run_id}:{service_name}",
            "amqp_url": self.infra.amqp_url,
            "amqp_exchange": self.exchange,
            "amqp_queue_prefix": f"{service_name}.{self.run_id}",
            "grpc_host": "127.0.0.1",
            "grpc_port": 0,
            "metrics_port": 0,
            "auth_jwks": self.jwks,
            "auth_token": self.token(service_name),
            "page_token_keys": (PAGE_TOKEN_KEY,),
            # One test clock for the test's services, apart from every other test's.
            "test_clock_key": f"{self.run_id}:test-clock",
            "log_level": "WARNING",
            **overrides,
        }
        values.setdefault("outbox_poll_interval", timedelta(milliseconds=50))
        values.setdefault("event_retry_delay", timedelta(milliseconds=200))
        values.setdefault("grpc_shutdown_grace", timedelta(seconds=1))
        return cls(**values)

    async def pool(self, schema: str) -> asyncpg.Pool:
        """A connection pool logged in as the schema's own role."""
        return await db.create_pool(
            db.dsn_with_user(self.infra.postgres_admin_url, schema), schema, application="test"
        )

    async def publish(self, event: Message, producer: str = "recurring", event_id: str = "") -> str:
        """Publish an event on this test's exchange as `producer`'s outbox relay would; its id."""
        _stamp(event, producer, event_id or str(uuid.uuid4()))
        await self._send([event])
        return str(event.header.event_id)  # type: ignore[attr-defined]

    async def publish_many(self, events: Sequence[Message], producer: str = "recurring") -> None:
        """Publish events in order on one connection, each with an id of its own."""
        for event in events:
            _stamp(event, producer, str(uuid.uuid4()))
        await self._send(events)

    async def _send(self, events: Sequence[Message]) -> None:
        connection = await aio_pika.connect(self.infra.amqp_url)
        async with connection:
            channel = await connection.channel()
            exchange = await channel.declare_exchange(
                self.exchange, aio_pika.ExchangeType.TOPIC, durable=True
            )
            for event in events:
                event_type = event_type_of(event)
                await exchange.publish(
                    aio_pika.Message(
                        body=event.SerializeToString(),
                        type=event_type,
                        message_id=event.header.event_id,  # type: ignore[attr-defined]
                        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                    ),
                    routing_key=event_type,
                )

    async def cleanup(self) -> None:
        await drop_leftovers(
            self.infra.postgres_admin_url,
            self.infra.redis_url,
            self.infra.amqp_url,
            schemas=self.schemas,
            key_patterns=[f"{self.run_id}:*"],
            queues=self.queues,
        )
        conn = await asyncpg.connect(self.infra.postgres_admin_url)
        try:
            for role in self.schemas:
                if await conn.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", role):
                    await conn.execute(f"DROP OWNED BY {db.quote_ident(role)} CASCADE")
                    await conn.execute(f"DROP ROLE {db.quote_ident(role)}")
        finally:
            await conn.close()
        async with await aio_pika.connect(self.infra.amqp_url) as connection:
            channel = await connection.channel()
            await channel.exchange_delete(self.exchange)


@pytest.fixture
async def env(infra: Infra) -> AsyncIterator[InfraEnv]:
    test_env = InfraEnv(infra)
    yield test_env
    await test_env.cleanup()


@pytest.fixture
async def otlp() -> AsyncIterator[OtlpReceiver]:
    """An OTLP/gRPC receiver that service processes started with `otlp.env()` export their spans to."""
    async with otlp_receiver() as receiver:
        yield receiver


@contextlib.asynccontextmanager
async def running_service(
    settings: CommonSettings, lifespan: Lifespan, migrations_dir: Path, *, clock: Clock | None = None
) -> AsyncIterator[ServiceHost]:
    """The service exactly as `main` runs it, on a free loopback port."""
    host = ServiceHost(settings, lifespan, migrations_dir, clock=clock)
    await host.start()
    try:
        yield host
    finally:
        await host.stop()


class EventCollector:
    """Listens on the test exchange like a consuming service would, and keeps what it hears."""

    def __init__(self, amqp_url: str, exchange: str, routing_keys: list[str]) -> None:
        self._amqp_url = amqp_url
        self._exchange = exchange
        self._routing_keys = routing_keys
        self.events: list[tuple[str, Message]] = []
        self._arrived = asyncio.Event()
        self._connection: aio_pika.abc.AbstractConnection | None = None

    async def __aenter__(self) -> EventCollector:
        self._connection = await aio_pika.connect(self._amqp_url)
        channel = await self._connection.channel()
        exchange = await channel.declare_exchange(self._exchange, aio_pika.ExchangeType.TOPIC, durable=True)
        queue = await channel.declare_queue(exclusive=True, auto_delete=True)
        for key in self._routing_keys:
            await queue.bind(exchange, routing_key=key)
        await queue.consume(self._on_message, no_ack=True)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._connection:
            await self._connection.close()

    async def _on_message(self, message: aio_pika.abc.AbstractIncomingMessage) -> None:
        event_type = message.type or message.routing_key or ""
        self.events.append((event_type, event_class(event_type).FromString(message.body)))
        self._arrived.set()

    def of_type(self, event_type: str) -> list[Any]:
        return [event for kind, event in self.events if kind == event_type]

    async def wait_for(
        self,
        event_type: str,
        predicate: Callable[[Any], bool] = lambda _: True,
        *,
        count: int = 1,
        timeout: float = 10.0,
    ) -> list[Any]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            found = [e for e in self.of_type(event_type) if predicate(e)]
            if len(found) >= count:
                return found
            remaining = deadline - loop.time()
            if remaining <= 0:
                seen = [kind for kind, _ in self.events]
                raise AssertionError(f"expected {count} x {event_type}, got {len(found)}; all seen: {seen}")
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), min(remaining, 0.5))


async def eventually(check: Callable[[], Any], *, timeout: float = 10.0, interval: float = 0.05) -> Any:
    """Poll an async or sync check until it returns something truthy (asynchronous effects)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result
        if loop.time() > deadline:
            raise AssertionError(f"condition not met within {timeout}s (last: {result!r})")
        await asyncio.sleep(interval)


def _stamp(event: Message, producer: str, event_id: str) -> None:
    header = event.header  # type: ignore[attr-defined]
    header.event_id = event_id
    header.producer = producer
