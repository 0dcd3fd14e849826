"""The host every service runs in: the same code path in production, `make run` and tests.

Start-up: wait for PostgreSQL, Redis and RabbitMQ; provision the schema and role (when an
admin DSN is set); migrate; build the service's parts; serve gRPC with health and reflection;
relay the outbox; consume events; run background workers under a supervisor. Health stays
NOT_SERVING until every dependency answers, and follows them afterwards. SIGTERM drains.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import aio_pika
import asyncpg
import grpc
import prometheus_client
import redis.exceptions
import uvloop
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from redis.asyncio import Redis

from billing_common import db, telemetry
from billing_common.auth import AccessPolicy, Authenticator
from billing_common.clock import Clock, SystemClock
from billing_common.events import EventConsumer, Handler, Outbox, OutboxRelay
from billing_common.grpc_server import BillingInterceptor
from billing_common.locks import RedisLocks
from billing_common.logging import configure_logging
from billing_common.settings import CommonSettings, load_settings

log = logging.getLogger(__name__)
T = TypeVar("T")

HEALTH_INTERVAL_S = 2.0
_UNREACHABLE = (
    OSError,
    ConnectionError,
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    aio_pika.exceptions.AMQPError,
    redis.exceptions.ConnectionError,
)
STARTUP_TIMEOUT_S = 120.0
STOP_STEP_TIMEOUT_S = 5.0
# A health entry that only says the process works; liveness probes ask it, so a database
# outage makes pods unready (""), not restarted.
LIVENESS = "liveness"
# Clients reconnect (and rebalance across new pods) at least this often.
MAX_CONNECTION_AGE_MS = 5 * 60 * 1000


@dataclass
class Resources:
    """The connections a service's parts are built from; created in the host, passed in."""

    settings: CommonSettings
    clock: Clock
    pool: asyncpg.Pool
    redis: Redis
    locks: RedisLocks
    outbox: Outbox


@dataclass
class Registration:
    """One gRPC service implementation and who may call each of its methods."""

    add_to_server: Callable[[Any, Any], None]  # generated `add_*_to_server`, given a server-like target
    servicer: Any
    service_name: str
    access: Mapping[str, set[str] | frozenset[str]]


@dataclass
class ServiceParts:
    registrations: list[Registration]
    event_handlers: Mapping[str, Handler] = field(default_factory=dict)
    background: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    on_stop: list[Callable[[], Awaitable[None]]] = field(default_factory=list)


Setup = Callable[[Resources], Awaitable[ServiceParts]]


class ServiceHost:
    def __init__(
        self,
        settings: CommonSettings,
        setup: Setup,
        migrations_dir: Path,
        *,
        clock: Clock | None = None,
    ) -> None:
        self.settings = settings
        self._setup = setup
        self._migrations_dir = migrations_dir
        self.clock = clock or SystemClock()
        self._tasks: list[asyncio.Task[None]] = []
        self._server: grpc.aio.Server | None = None
        self._health = health.aio.HealthServicer()
        self._service_names: list[str] = []
        self.port = 0
        self.resources: Resources | None = None
        self.parts: ServiceParts | None = None
        self.consumer: EventConsumer | None = None
        self._amqp: aio_pika.abc.AbstractRobustConnection | None = None

    async def start(self) -> None:
        s = self.settings
        await _retry_until_up("PostgreSQL", lambda: self._provision_and_migrate())
        pool = await db.create_pool(
            s.database_url,
            s.schema,
            application=s.service_name,
            min_size=s.db_pool_min,
            max_size=s.db_pool_max,
        )
        redis = Redis.from_url(s.redis_url)
        await _retry_until_up("Redis", redis.ping)
        self._amqp = await _retry_until_up("RabbitMQ", lambda: aio_pika.connect_robust(s.amqp_url, timeout=5))
        outbox = Outbox(s.service_name, self.clock)
        self.resources = Resources(s, self.clock, pool, redis, RedisLocks(redis, s.namespace), outbox)
        self.parts = parts = await self._setup(self.resources)

        policy = AccessPolicy({})
        for registration in parts.registrations:
            policy = policy.merged(AccessPolicy.for_service(registration.service_name, registration.access))
        authenticator = Authenticator(s.auth_jwt_secret, policy, insecure=s.auth_insecure)
        if s.auth_insecure:
            log.warning("INSECURE development mode: calls are accepted without a verified token")
        server = grpc.aio.server(
            options=[
                ("grpc.max_connection_age_ms", MAX_CONNECTION_AGE_MS),
                ("grpc.max_connection_age_grace_ms", 30_000),
            ],
            interceptors=[BillingInterceptor(s.service_name, authenticator, slow_call=s.log_slow_rpc)],
        )
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        for registration in parts.registrations:
            registration.add_to_server(registration.servicer, _GenericHandlersOnly(server))
            self._service_names.append(registration.service_name)
        reflection.enable_server_reflection(
            [*self._service_names, health.SERVICE_NAME, reflection.SERVICE_NAME], server
        )
        address = f"{s.grpc_host}:{s.grpc_port}"
        if s.grpc_tls_cert:
            credentials = grpc.ssl_server_credentials(
                [(Path(s.grpc_tls_key).read_bytes(), Path(s.grpc_tls_cert).read_bytes())]
            )
            self.port = server.add_secure_port(address, credentials)
        else:
            self.port = server.add_insecure_port(address)
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        await self._set_liveness(health_pb2.HealthCheckResponse.SERVING)
        await server.start()
        self._server = server

        relay = OutboxRelay(
            pool,
            s.amqp_url,
            s.amqp_exchange,
            s.service_name,
            wake=outbox.written,
            poll_interval=s.outbox_poll_interval,
        )
        self._spawn("outbox-relay", relay.run)
        if parts.event_handlers:
            self.consumer = EventConsumer(
                pool,
                s.amqp_url,
                s.amqp_exchange,
                f"{s.queue_prefix}.events",
                parts.event_handlers,
                max_retries=s.event_max_retries,
                retry_delay=s.event_retry_delay,
            )
            self._spawn("event-consumer", self.consumer.run)
        for index, work in enumerate(parts.background):
            self._spawn(f"background-{index}", work)
        self._spawn("health", self._watch_dependencies)
        # What start-up built (modules, descriptors, pools) lives as long as the process: out of the
        # collector's sight, a full collection no longer walks it in the middle of a request.
        gc.freeze()
        log.info("service started", extra={"port": self.port, "services": self._service_names})

    async def _provision_and_migrate(self) -> None:
        s = self.settings
        if s.db_admin_url:
            login = urlsplit(s.database_url)
            if not login.username:
                raise ValueError("the database URL must name the service's login role")
            await db.provision(s.db_admin_url, s.schema, login.username, login.password)
        conn = await asyncpg.connect(s.database_url)
        try:
            await db.migrate(
                conn, s.schema, [*db.common_migrations(), *db.migrations_in(self._migrations_dir)]
            )
        finally:
            await conn.close()

    def _spawn(self, name: str, work: Callable[[], Awaitable[None]]) -> None:
        self._tasks.append(asyncio.create_task(_supervise(name, work), name=name))

    async def _set_liveness(self, status: Any) -> None:
        await self._health.set(LIVENESS, status)

    async def _set_health(self, status: Any) -> None:
        for name in ("", *self._service_names):
            await self._health.set(name, status)

    async def _watch_dependencies(self) -> None:
        assert self.resources is not None and self._amqp is not None
        serving: bool | None = None
        while True:
            try:
                async with asyncio.timeout(HEALTH_INTERVAL_S):
                    await self.resources.pool.fetchval("SELECT 1")
                    await self.resources.redis.ping()
                ok = not self._amqp.is_closed and self._amqp.connected.is_set()
            except Exception:
                ok = False
            if ok != serving:
                serving = ok
                await self._set_health(
                    health_pb2.HealthCheckResponse.SERVING
                    if ok
                    else health_pb2.HealthCheckResponse.NOT_SERVING
                )
                log.info("health changed", extra={"serving": ok})
            await asyncio.sleep(HEALTH_INTERVAL_S)

    async def stop(self) -> None:
        """Drain in-flight calls, then stop background work and close connections, each step bounded."""
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        await self._set_liveness(health_pb2.HealthCheckResponse.NOT_SERVING)
        if self._server is not None:
            await self._server.stop(self.settings.grpc_shutdown_grace.total_seconds())
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=STOP_STEP_TIMEOUT_S)
        if self.parts:
            for hook in self.parts.on_stop:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(hook(), STOP_STEP_TIMEOUT_S)
        if self.resources:
            try:
                await asyncio.wait_for(self.resources.pool.close(), STOP_STEP_TIMEOUT_S)
            except TimeoutError:
                log.warning("database pool did not close in time; terminating its connections")
                self.resources.pool.terminate()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.resources.redis.aclose(), STOP_STEP_TIMEOUT_S)
        if self._amqp:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._amqp.close(), STOP_STEP_TIMEOUT_S)
        log.info("service stopped")

    async def run_until_signalled(self) -> None:
        """Serve until SIGTERM/SIGINT; a signal that arrives while still starting stops at once."""
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        starting = asyncio.create_task(self.start())
        stopping = asyncio.create_task(stop.wait())
        await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if not starting.done():
            log.info("stopped while starting")
            starting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await starting
        else:
            starting.result()  # a failed start ends the process with its error
            await stopping
            log.info("shutting down: draining in-flight calls")
        await self.stop()


class _GenericHandlersOnly:
    """The server as generated `add_*_to_server` code sees it: its generic handlers only.

    Generated code registers each method twice, as a generic handler and as a registered
    method; grpc.aio serves the registered path 3-8% slower per call (for a service with as many
    methods as quota's, `bench/grpc_runtime.py`), so only the generic handler, which serves the
    same methods, is kept.
    """

    def __init__(self, server: grpc.aio.Server) -> None:
        self._server = server

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        self._server.add_generic_rpc_handlers(handlers)

    def add_registered_method_handlers(self, service: str, handlers: Any) -> None:
        """Left out on purpose: the generic handler added with them serves these methods."""


def run_event_loop(main: Coroutine[Any, Any, T]) -> T:
    """Run the platform's event loop: uvloop, which takes about 12% less CPU per gRPC call than
    asyncio's own loop (`bench/grpc_runtime.py`)."""
    return uvloop.run(main)


async def _supervise(name: str, work: Callable[[], Awaitable[None]]) -> None:
    """Keep a background loop alive: log a crash and start it again after a pause."""
    while True:
        try:
            await work()
            return
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("background task crashed; restarting", extra={"task": name})
            await asyncio.sleep(1.0)


async def _retry_until_up(what: str, attempt: Callable[[], Awaitable[T]]) -> T:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + STARTUP_TIMEOUT_S
    delay = 0.2
    while True:
        try:
            return await attempt()
        except _UNREACHABLE as exc:
            if loop.time() > deadline:
                raise
            log.warning("waiting for %s", what, extra={"error": str(exc)})
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)


S = TypeVar("S", bound=CommonSettings)


def run_service(
    prefix: str, settings_class: type[S], setup: Callable[[S], Setup], migrations_dir: Path
) -> None:
    """What every service's `main` does: settings, logging, tracing, then serve until SIGTERM."""
    settings = load_settings(settings_class, prefix)
    configure_logging(settings.service_name, settings.log_level)
    telemetry.setup_telemetry(settings.service_name)
    if settings.metrics_port:
        prometheus_client.start_http_server(settings.metrics_port)
    try:
        run_event_loop(ServiceHost(settings, setup(settings), migrations_dir).run_until_signalled())
    finally:
        telemetry.shutdown()
