"""The host every service runs in: the same code path in production, `make run` and tests.

Start-up: wait for PostgreSQL, Redis and RabbitMQ; provision the schema and roles (when an
admin DSN is set); migrate (or, where a job migrates, wait until it has); enter the service's
lifespan, which opens what its parts need and yields them; serve gRPC with health and
reflection; relay the outbox; consume events; run background work under a supervisor. Health
stays NOT_SERVING until what serving needs answers (PostgreSQL; Redis too for a service that
serves from it) and follows it afterwards; every dependency, the broker included, has its own
health entry and gauge. SIGTERM drains, cancels the background
work, then leaves the lifespan (which closes what it opened). `--migrate-only` migrates and exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import sys
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from datetime import timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import aio_pika
import asyncpg
import grpc
import prometheus_client
import uvloop
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from redis.asyncio import Redis

from billing_common import db, partitions, telemetry
from billing_common.auth import AuthConfig
from billing_common.clock import Clock, SystemClock
from billing_common.events import QUEUE_WATCH_INTERVAL_S, EventConsumer, Handlers, Outbox, OutboxRelay
from billing_common.faults import is_dependency_failure
from billing_common.grpc_server import BillingInterceptor
from billing_common.locks import RedisLocks
from billing_common.logging import configure_logging
from billing_common.settings import CommonSettings, load_settings
from billing_common.suite_clock import (
    REPORT_INTERVAL,
    ClockAgent,
    ClockControl,
    DueWork,
    SharedClock,
    outbox_due,
)
from billing_common.validation import RequestValidator

log = logging.getLogger(__name__)
T = TypeVar("T")

HEALTH_INTERVAL_S = 2.0
STARTUP_TIMEOUT_S = 120.0
STOP_STEP_TIMEOUT_S = 5.0
# A health entry that only says the process works; liveness probes ask it, so a database
# outage makes pods unready (""), not restarted.
LIVENESS = "liveness"


class Dependency(StrEnum):
    POSTGRESQL = "postgresql"
    REDIS = "redis"
    RABBITMQ = "rabbitmq"

    @property
    def health_entry(self) -> str:
        """The health service name that reports this dependency alone (`dependency.rabbitmq`)."""
        return f"dependency.{self.value}"


DEPENDENCY_UP = prometheus_client.Gauge(
    "billing_dependency_up", "1 while the service reaches the dependency, else 0", ["service", "dependency"]
)


@dataclass
class Resources:
    """The connections a service's parts are built from; created in the host, passed in."""

    settings: CommonSettings
    clock: Clock
    pool: asyncpg.Pool
    redis: Redis
    locks: RedisLocks
    outbox: Outbox
    # The bearer token for calls to other services (`open_channel(addr, r.outgoing_token)`), kept current.
    outgoing_token: Callable[[], str]
    # Sets and advances the suite's test clock; None unless TEST_CLOCK is on.
    clock_control: ClockControl | None = None


@dataclass
class Registration:
    """One gRPC service implementation and who may call each of its methods."""

    add_to_server: Callable[[Any, Any], None]  # generated `add_*_to_server`, given a server-like target
    servicer: Any
    service_name: str
    access: Mapping[str, set[str] | frozenset[str]]


@dataclass(frozen=True)
class Background:
    """Work that runs beside the RPCs while the service lives; restarted after a crash."""

    run: Callable[[], Awaitable[None]]
    # How SIGTERM winds it down within the drain, beside the RPCs: it stops taking new work and
    # finishes or hands back what it has in hand (a worker's batch) before it is cancelled.
    drain: Callable[[], Awaitable[None]] | None = None

    @classmethod
    def every(
        cls,
        interval: timedelta,
        step: Callable[[], Awaitable[object]],
        what: str,
        *,
        wait_first: bool = False,
    ) -> Background:
        """`step` done again each `interval` (the first time after one interval with `wait_first`): a
        round a dependency failure stops is logged as `what` failing, and the next round comes as usual;
        any other error is a crash for the supervisor."""

        async def rounds() -> None:
            if wait_first:
                await asyncio.sleep(interval.total_seconds())
            while True:
                try:
                    await step()
                except Exception as error:
                    if not is_dependency_failure(error):
                        raise
                    log.warning("%s failed", what, exc_info=True)
                await asyncio.sleep(interval.total_seconds())

        return cls(rounds)


@dataclass
class ServiceParts:
    """What a service's lifespan yields to the host: its RPCs, consumers and background work."""

    registrations: list[Registration]
    event_handlers: Handlers = field(default_factory=Handlers)
    background: Sequence[Background] = ()
    # The longest an in-flight call may take (a charge waiting on its gateway): SIGTERM drains at
    # least this long, whatever GRPC_SHUTDOWN_GRACE says, so no call is cut off half done.
    drain_at_least: timedelta = timedelta(0)
    # What the RPCs cannot be answered without: readiness follows these alone. The broker is
    # never one: the outbox keeps events while it is away.
    serving_needs: frozenset[Dependency] = frozenset({Dependency.POSTGRESQL})
    # With the test clock on: the work this service still has due at an instant, so that
    # AdvanceClock waits for it (the outbox and the event queues are counted for every service).
    due_work: list[DueWork] = field(default_factory=list)


Lifespan = Callable[[Resources], AbstractAsyncContextManager[ServiceParts]]
"""A service's parts for the life of the process, one async context manager (Starlette's shape):
it opens what the parts need (channels, clients), yields the parts, and closes what it opened
once the host has drained the RPCs and cancelled the background work."""


class ServiceHost:
    def __init__(
        self,
        settings: CommonSettings,
        lifespan: Lifespan,
        migrations_dir: Path,
        *,
        clock: Clock | None = None,
        env_prefix: str = "",
    ) -> None:
        self.settings = settings
        self._env_prefix = env_prefix
        self._lifespan = lifespan
        self._parts_open = contextlib.AsyncExitStack()
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
        auth = AuthConfig.from_settings(s, self._env_prefix)
        if s.migrate_on_start:
            await _retry_until_up("PostgreSQL", self.migrate)
        else:
            await _retry_until_up("the schema's migrations", self._check_migrated)
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
        control = None
        if s.test_clock:
            log.warning("TEST CLOCK: this service reads the suite's test clock, not wall time")
            shared = SharedClock(self.clock)
            self.clock, control = shared, ClockControl(shared, redis, s.test_clock_key)
        outbox = Outbox(s.service_name, self.clock)
        locks = RedisLocks(redis, s.namespace, db.FencingTokens(pool))
        self.resources = Resources(s, self.clock, pool, redis, locks, outbox, auth.outgoing_token, control)
        agent = None
        if isinstance(self.clock, SharedClock):
            agent = ClockAgent(self.clock, pool, redis, s.test_clock_key, s.service_name)
            await agent.resume()
        self.parts = parts = await self._parts_open.enter_async_context(self._lifespan(self.resources))

        authenticator = auth.authenticator({r.service_name: r.access for r in parts.registrations})
        if s.auth_insecure:
            log.warning("INSECURE development mode: calls are accepted without a verified token")
        validator = RequestValidator(self.clock)
        validator.prepare_services(r.service_name for r in parts.registrations)
        server = grpc.aio.server(
            options=[
                ("grpc.max_connection_age_ms", _milliseconds(s.grpc_max_connection_age)),
                # Calls in flight on a closing connection finish as they would at shutdown.
                ("grpc.max_connection_age_grace_ms", _milliseconds(s.grpc_shutdown_grace)),
            ],
            interceptors=[
                BillingInterceptor(
                    s.service_name, authenticator, slow_call=s.log_slow_rpc, validator=validator
                )
            ],
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
        if parts.event_handlers.event_types:
            self.consumer = EventConsumer(
                pool,
                s.amqp_url,
                s.amqp_exchange,
                f"{s.queue_prefix}.events",
                parts.event_handlers,
                max_retries=s.event_max_retries,
                retry_delay=s.event_retry_delay,
                delivery_limit=s.event_delivery_limit,
                watch_interval=REPORT_INTERVAL if agent else timedelta(seconds=QUEUE_WATCH_INTERVAL_S),
            )
            self._spawn("event-consumer", self.consumer.run)
        if agent is not None:
            consumed = [self.consumer.due] if self.consumer else []
            agent.watch([outbox_due(pool), *consumed, *parts.due_work])
            self._spawn("test-clock", agent.run)
        for index, work in enumerate(parts.background):
            self._spawn(f"background-{index}", work.run)
        self._spawn("health", self._watch_dependencies)
        # What start-up built (modules, descriptors, pools) lives as long as the process: out of the
        # collector's sight, a full collection no longer walks it in the middle of a request.
        gc.freeze()
        log.info("service started", extra={"port": self.port, "services": self._service_names})

    def _migrations(self) -> list[db.Migration]:
        return [*db.common_migrations(), *db.migrations_in(self._migrations_dir)]

    async def migrate(self) -> None:
        """Provision (with an admin DSN), then migrate as the schema's owner, granting the rows to
        the runtime role where that is another role; then make and drop time partitions (the
        daily run of `--migrate-only` keeps them ahead of the clock)."""
        s = self.settings
        owner, runtime = urlsplit(s.db_migration_url or s.database_url), urlsplit(s.database_url)
        if not owner.username or not runtime.username:
            raise ValueError("the database URLs must name the service's login roles")
        separate = runtime.username != owner.username
        if s.db_admin_url:
            await db.provision(
                s.db_admin_url,
                s.schema,
                owner.username,
                owner.password,
                runtime_role=runtime.username if separate else None,
                runtime_password=runtime.password,
            )
        conn = await asyncpg.connect(s.db_migration_url or s.database_url)
        try:
            await db.migrate(
                conn,
                s.schema,
                self._migrations(),
                lock_timeout=s.migration_lock_timeout,
                runtime_role=runtime.username if separate else None,
            )
            await partitions.maintain(
                conn,
                s.schema,
                s.partitioned_tables(),
                self.clock.now(),
                lock_timeout=s.migration_lock_timeout,
            )
        finally:
            await conn.close()

    async def _check_migrated(self) -> None:
        conn = await asyncpg.connect(self.settings.database_url)
        try:
            await db.check_migrated(conn, self.settings.schema, self._migrations())
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
        """Each dependency's own health entry and gauge; readiness from what serving needs."""
        assert self.resources is not None and self._amqp is not None and self.parts is not None
        pool, redis, amqp = self.resources.pool, self.resources.redis, self._amqp

        async def broker() -> bool:
            return not amqp.is_closed and amqp.connected.is_set()

        checks: dict[Dependency, Callable[[], Awaitable[object]]] = {
            Dependency.POSTGRESQL: lambda: pool.fetchval("SELECT 1"),
            Dependency.REDIS: redis.ping,
            Dependency.RABBITMQ: broker,
        }
        seen: dict[Dependency, bool] = {}
        serving: bool | None = None
        while True:
            for dependency, check in checks.items():
                up = await _answers(check)
                DEPENDENCY_UP.labels(self.settings.service_name, dependency.value).set(1 if up else 0)
                if seen.get(dependency) != up:
                    seen[dependency] = up
                    await self._health.set(dependency.health_entry, _status(up))
                    log.info("dependency changed", extra={"dependency": dependency.value, "up": up})
            ready = all(seen[dependency] for dependency in self.parts.serving_needs)
            if ready != serving:
                serving = ready
                await self._set_health(_status(ready))
                log.info("health changed", extra={"serving": ready})
            await asyncio.sleep(HEALTH_INTERVAL_S)

    async def stop(self) -> None:
        """Drain in-flight calls, then stop background work and close connections, each step bounded."""
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        await self._set_liveness(health_pb2.HealthCheckResponse.NOT_SERVING)
        drain = self.settings.grpc_shutdown_grace
        if self.parts:
            drain = max(drain, self.parts.drain_at_least)
        winding = [self._server.stop(drain.total_seconds())] if self._server is not None else []
        if self.parts:
            winding += [
                asyncio.wait_for(work.drain(), drain.total_seconds())
                for work in self.parts.background
                if work.drain is not None
            ]
        for ended in await asyncio.gather(*winding, return_exceptions=True):
            if isinstance(ended, TimeoutError):
                log.warning("background work did not wind down within the drain; cancelling it")
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=STOP_STEP_TIMEOUT_S)
        try:
            await asyncio.wait_for(self._parts_open.aclose(), STOP_STEP_TIMEOUT_S)
        except Exception:
            log.exception("the service's lifespan did not close cleanly")
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
    method; grpc.aio serves the registered path slower per call (`bench/grpc_runtime.py` measures
    it for a service with as many methods as quota's), so only the generic handler, which serves the
    same methods, is kept.
    """

    def __init__(self, server: grpc.aio.Server) -> None:
        self._server = server

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        self._server.add_generic_rpc_handlers(handlers)

    def add_registered_method_handlers(self, service: str, handlers: Any) -> None:
        """Left out on purpose: the generic handler added with them serves these methods."""


def _milliseconds(span: timedelta) -> int:
    return int(span.total_seconds() * 1000)


def _status(up: bool) -> Any:
    return health_pb2.HealthCheckResponse.SERVING if up else health_pb2.HealthCheckResponse.NOT_SERVING


async def _answers(check: Callable[[], Awaitable[object]]) -> bool:
    """Whether the dependency answers within a health interval (a falsy answer counts as down)."""
    try:
        async with asyncio.timeout(HEALTH_INTERVAL_S):
            return bool(await check())
    except Exception:
        return False


def run_event_loop(main: Coroutine[Any, Any, T]) -> T:
    """Run the platform's event loop: uvloop, which takes less CPU per gRPC call than asyncio's own
    loop (`bench/grpc_runtime.py` measures both)."""
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
        except Exception as exc:
            waiting = is_dependency_failure(exc) or isinstance(exc, db.SchemaBehind)
            if not waiting or loop.time() > deadline:
                raise
            log.warning("waiting for %s", what, extra={"error": str(exc)})
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)


S = TypeVar("S", bound=CommonSettings)


def run_service(
    prefix: str, settings_class: type[S], lifespan: Callable[[S], Lifespan], migrations_dir: Path
) -> None:
    """What every service's `main` does: settings, logging, tracing, then serve until SIGTERM.

    With `--migrate-only` (the migration job) it provisions and migrates, then exits.
    """
    settings = load_settings(settings_class, prefix)
    configure_logging(settings.service_name, settings.log_level)
    if "--migrate-only" in sys.argv[1:]:
        host = ServiceHost(settings, lifespan(settings), migrations_dir)
        run_event_loop(_retry_until_up("PostgreSQL", host.migrate))
        return
    telemetry.setup_telemetry(settings.service_name)
    if settings.metrics_port:
        prometheus_client.start_http_server(settings.metrics_port)
    host = ServiceHost(settings, lifespan(settings), migrations_dir, env_prefix=prefix)
    try:
        run_event_loop(host.run_until_signalled())
    finally:
        telemetry.shutdown()
