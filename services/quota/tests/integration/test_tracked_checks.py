"""Checks answered from the process while Redis tracks the counters: never stale once told."""

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
from redis.asyncio import Redis

from billing.quota.v1 import quota_pb2 as pb
from billing_devtools.testing.plugin import InfraEnv, eventually
from billing_devtools.testing.servers import RedisServer

from .conftest import Quota, create_plan, entitlement, quota_service, spec, subscribe, usage


@contextlib.asynccontextmanager
async def own_client(env: InfraEnv) -> AsyncIterator[Redis]:
    client = Redis.from_url(env.infra.redis_url)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
async def redis(env: InfraEnv) -> AsyncIterator[Redis]:
    async with own_client(env) as client:
        yield client


async def used(quota: Quota, tenant: str = "acme", key: str = "calls") -> int:
    reply = await quota.caller.CheckQuota(pb.CheckQuotaRequest(tenant_id=tenant, key=key))
    return reply.used


async def used_is(quota: Quota, expected: int) -> bool:
    return await used(quota) == expected


async def record(quota: Quota, delta: int, idempotency_key: str) -> None:
    reply = await quota.caller.RecordUsage(
        pb.RecordUsageRequest(event=usage("acme", "calls", delta, idempotency_key))
    )
    assert reply.counted


async def entitled_in(pod: Quota) -> None:
    async def ready() -> bool:
        reply = await pod.caller.GetEntitlements(pb.GetEntitlementsRequest(tenant_id="acme"))
        return not reply.denied

    await eventually(ready)


async def tracking_up(redis: Redis, pod: Quota) -> None:
    async def named() -> bool:
        names = {client["name"] for client in await redis.client_list()}
        return {f"{pod.settings.namespace}:tracking-{role}" for role in ("listener", "reader")} <= names

    await eventually(named)


async def mget_calls(redis: Redis) -> int:
    stats = await redis.info("commandstats")
    return int(stats.get("cmdstat_mget", {}).get("calls", 0))


@contextlib.asynccontextmanager
async def two_pods(env: InfraEnv, redis: Redis, **overrides: Any) -> AsyncIterator[tuple[Quota, Quota]]:
    """Two quota pods of one deployment, both tracking, and tenant acme entitled in both."""
    async with quota_service(env, **overrides) as a, quota_service(env, **overrides) as b:
        await create_plan(a, "pro", spec(entitlement("calls", 100)))
        await subscribe(a, "acme", "pro")
        await entitled_in(b)
        await tracking_up(redis, a)
        await tracking_up(redis, b)
        yield a, b


async def test_a_pod_sees_its_own_record_at_once_and_another_pods_as_redis_announces_it(
    env: InfraEnv, redis: Redis
) -> None:
    async with two_pods(env, redis) as (a, b):
        assert await used(a) == 0 and await used(b) == 0  # both pods now hold the value
        await record(a, 5, "k1")
        assert await used(a) == 5
        await eventually(lambda: used_is(b, 5), timeout=2)
        await record(b, 7, "k2")
        assert await used(b) == 12
        await eventually(lambda: used_is(a, 12), timeout=2)


async def test_repeated_checks_of_an_unchanged_counter_do_not_ask_redis(
    private_redis: tuple[InfraEnv, RedisServer],
) -> None:
    env, _ = private_redis  # Redis's command counts are this test's alone
    async with quota_service(env) as quota, own_client(env) as redis:
        await create_plan(quota, "pro", spec(entitlement("calls", 100)))
        await subscribe(quota, "acme", "pro")
        await tracking_up(redis, quota)
        await record(quota, 3, "k1")
        assert await used(quota) == 3
        before = await mget_calls(redis)
        answers = await asyncio.gather(*(used(quota) for _ in range(200)))
        assert set(answers) == {3}
        assert await mget_calls(redis) - before < 10  # 200 checks, and not one MGET each


async def test_a_pod_that_loses_its_listener_forgets_what_it_held(env: InfraEnv, redis: Redis) -> None:
    async with two_pods(env, redis) as (a, b):
        await record(a, 2, "k1")
        assert await used(b) == 2
        listener = next(
            client
            for client in await redis.client_list()
            if client["name"] == f"{b.settings.namespace}:tracking-listener"
        )
        await redis.client_kill_filter(_id=listener["id"])
        await record(a, 3, "k2")  # announced to nobody in b: its listener is gone
        await eventually(lambda: used_is(b, 5), timeout=5)
        await tracking_up(redis, b)
        await record(a, 4, "k3")
        await eventually(lambda: used_is(b, 9), timeout=2)


async def test_a_flushed_redis_is_announced_and_the_counts_stay_right(env: InfraEnv) -> None:
    own_db = urlunsplit(urlsplit(env.infra.redis_url)._replace(path="/7"))  # flushed alone
    redis = Redis.from_url(own_db)
    try:
        async with two_pods(env, redis, redis_url=own_db) as (a, b):
            await record(a, 4, "k1")
            assert await used(b) == 4
            await redis.flushdb()
            await record(a, 1, "k2")  # the counter is rebuilt from PostgreSQL first
            assert await used(a) == 5
            await eventually(lambda: used_is(b, 5), timeout=2)
    finally:
        await redis.aclose()


async def test_with_no_counter_cache_every_check_asks_redis(
    private_redis: tuple[InfraEnv, RedisServer],
) -> None:
    env, _ = private_redis  # Redis's command counts are this test's alone
    async with quota_service(env, counter_cache_entries=0) as quota, own_client(env) as redis:
        await create_plan(quota, "pro", spec(entitlement("calls", 100)))
        await subscribe(quota, "acme", "pro")
        await record(quota, 3, "k1")
        before = await mget_calls(redis)
        for _ in range(20):
            assert await used(quota) == 3
        assert await mget_calls(redis) - before == 20


class SilencingProxy:
    """A TCP proxy to Redis that can stop passing Redis's words to the connections open now that
    named themselves a tracking listener, without closing them: a listener gone silent."""

    def __init__(self, redis_url: str) -> None:
        self._parts = urlsplit(redis_url)
        self._upstream = (self._parts.hostname or "127.0.0.1", self._parts.port or 6379)
        self._listeners: list[asyncio.Event] = []  # set: pass Redis's words on
        self._silenced: list[asyncio.Event] = []
        self._server: asyncio.Server | None = None
        self.url = ""

    async def __aenter__(self) -> "SilencingProxy":
        self._server = await asyncio.start_server(self._connection, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = urlunsplit(self._parts._replace(netloc=f"127.0.0.1:{port}"))
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._server is not None
        self._server.close()
        for passing in self._silenced:  # let the held words through, so every relay can end
            passing.set()

    def silence_listeners(self) -> None:
        for passing in self._listeners:
            passing.clear()
        # Listeners that connect later are heard again.
        self._silenced, self._listeners = self._silenced + self._listeners, []

    async def _connection(self, client_in: asyncio.StreamReader, client_out: asyncio.StreamWriter) -> None:
        redis_in, redis_out = await asyncio.open_connection(*self._upstream)
        passing = asyncio.Event()
        passing.set()

        async def to_redis() -> None:
            seen = b""
            while data := await client_in.read(65536):
                if len(seen) < 4096:
                    seen += data
                    if b"tracking-listener" in seen and passing not in self._listeners:
                        self._listeners.append(passing)
                redis_out.write(data)
                await redis_out.drain()

        async def to_client() -> None:
            while data := await redis_in.read(65536):
                await passing.wait()
                client_out.write(data)
                await client_out.drain()

        with contextlib.suppress(ConnectionError):
            await asyncio.gather(to_redis(), to_client())
        client_out.close()
        redis_out.close()


async def test_a_pod_whose_listener_goes_silent_forgets_within_the_silence_limit(
    env: InfraEnv, redis: Redis
) -> None:
    async with (
        SilencingProxy(env.infra.redis_url) as proxy,
        quota_service(env) as a,
        quota_service(env, redis_url=proxy.url) as b,
    ):
        await create_plan(a, "pro", spec(entitlement("calls", 100)))
        await subscribe(a, "acme", "pro")
        await entitled_in(b)
        await tracking_up(redis, b)
        await record(a, 2, "k1")
        await eventually(lambda: used_is(b, 2), timeout=2)  # b now holds 2
        proxy.silence_listeners()
        await record(a, 3, "k2")
        assert await used(b) == 2  # the announcement is held back: b cannot know yet
        # b's heartbeat goes unanswered; after the silence limit (6 s) it forgets and asks Redis.
        await eventually(lambda: used_is(b, 5), timeout=10)
        await tracking_up(redis, b)  # a new listener, heard again
        await record(a, 4, "k3")
        await eventually(lambda: used_is(b, 9), timeout=2)
