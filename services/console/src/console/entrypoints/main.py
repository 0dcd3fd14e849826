"""Start the console: channels to the five services, Redis sessions, the event listener that keeps
the cache fresh, the suite's test clock when it is on, and the web server.
`python -m console.entrypoints.main`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Callable

import aio_pika
import prometheus_client
import uvicorn
import uvloop
from redis.asyncio import Redis

from billing_common.auth import WatchedFile
from billing_common.clock import Clock, SystemClock
from billing_common.grpc_client import open_channel
from billing_common.logging import configure_logging
from billing_common.paging import MAX_PAGE_SIZE
from billing_common.settings import load_settings
from billing_common.suite_clock import ClockReader, SharedClock
from console.adapters.events import CacheInvalidation, DeadLetterDepths
from console.adapters.people import AccountsFile
from console.adapters.services import GrpcServices
from console.adapters.sessions import RedisSessions
from console.app.actions import Actions
from console.app.cache import ReadCache
from console.app.pages import Pages
from console.app.reads import CachedReads
from console.app.signin import SignIn
from console.domain.sessions import SessionRules
from console.entrypoints.web import Console, build_app
from console.settings import ConsoleSettings

log = logging.getLogger(__name__)


def outgoing_token(settings: ConsoleSettings) -> str | Callable[[], str]:
    """The console's own token (`sub` console): a file read again when renewed, or inline."""
    if settings.auth_token_file:
        return WatchedFile(settings.auth_token_file, str.strip)
    return settings.auth_token.strip()


async def suite_clock(
    settings: ConsoleSettings, redis: Redis, wall: Clock
) -> tuple[Clock, ClockReader | None]:
    """The clock the pages call "now": the suite's instant when the test clock is on, else wall time."""
    if not settings.test_clock:
        return wall, None
    log.warning("TEST CLOCK: the console's pages read the suite's test clock, not wall time")
    clock = SharedClock(wall)
    reader = ClockReader(clock, redis, settings.test_clock_key)
    await reader.follow()
    return clock, reader


async def serve(settings: ConsoleSettings) -> None:
    token = outgoing_token(settings)
    addresses = {
        "gateway-adapter": settings.gateway_adapter_addr,
        "quota": settings.quota_addr,
        "recurring": settings.recurring_addr,
        "dunning": settings.dunning_addr,
        "tier": settings.tier_addr,
    }
    channels = {name: open_channel(address, token) for name, address in addresses.items()}
    redis = Redis.from_url(settings.redis_url)
    amqp = await aio_pika.connect_robust(settings.amqp_url)
    # Sessions expire on wall time: advancing the suite's clock signs nobody out.
    wall = SystemClock()
    clock, reader = await suite_clock(settings, redis, wall)
    following = asyncio.create_task(reader.run()) if reader is not None else None
    services = GrpcServices(channels, settings.rpc_timeout.total_seconds())
    reads = CachedReads(
        services, ReadCache(settings.cache_ttl.total_seconds(), time.monotonic), MAX_PAGE_SIZE
    )
    await CacheInvalidation(amqp, settings.amqp_exchange, reads).start()

    async def ready() -> bool:
        try:
            return bool(await redis.ping()) and not amqp.is_closed
        except Exception:  # any failure of Redis means not ready, nothing more
            return False

    console = Console(
        pages=Pages(reads, DeadLetterDepths(amqp, settings.dead_letter_queues), clock, settings.gateways),
        actions=Actions(services, reads),
        signin=SignIn(
            AccountsFile(settings.users_file),
            RedisSessions(redis, settings.namespace),
            wall,
            SessionRules(settings.session_idle, settings.session_longest),
        ),
        ready=ready,
        cookie_secure=settings.cookie_secure,
    )
    server = uvicorn.Server(
        uvicorn.Config(
            build_app(console),
            host=settings.http_host,
            port=settings.http_port,
            log_config=None,
            access_log=False,
            proxy_headers=True,
        )
    )
    # uvicorn drains on SIGTERM and then raises the signal again to the handler found before it:
    # this one, so the cleanup below still runs.
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: setattr(server, "should_exit", True))
    log.info("console serving", extra={"port": settings.http_port})
    try:
        await server.serve()
    finally:
        if following is not None:
            following.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await following
        with contextlib.suppress(Exception):
            await amqp.close()
        await redis.aclose()
        for channel in channels.values():
            await channel.close()


def main() -> None:
    settings = load_settings(ConsoleSettings, "CONSOLE")
    configure_logging(settings.service_name, settings.log_level)
    if settings.metrics_port:
        prometheus_client.start_http_server(settings.metrics_port)
    uvloop.run(serve(settings))


if __name__ == "__main__":
    main()
