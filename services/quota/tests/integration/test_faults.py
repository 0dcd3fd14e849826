"""Faults under quota: a database connection lost at the worst moment, the database stopped."""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import timedelta
from typing import Any

import asyncpg
import grpc
import pytest

from billing.quota.v1 import quota_pb2 as pb
from billing.quota.v1 import quota_pb2_grpc
from billing_devtools.testing.faultproxy import FaultProxy
from billing_devtools.testing.plugin import InfraEnv, eventually
from billing_devtools.testing.servers import PostgresCluster, outage
from quota.settings import QuotaSettings

from .conftest import STOREFRONT, Quota, create_plan, entitlement, quota_service, spec, subscribe, usage

# No idle polling of the outbox: the only COMMITs the proxy sees are the calls' own.
QUIET = {"outbox_poll_interval": timedelta(hours=1)}


async def ledger(quota: Quota, tenant: str, key: str) -> tuple[int, list[str]]:
    """The usage ledger's total for (tenant, key) and the idempotency keys it holds."""
    conn = await asyncpg.connect(quota.env.infra.postgres_admin_url)
    try:
        rows = await conn.fetch(
            f'SELECT idempotency_key, delta FROM "{quota.settings.schema}".usage_records '
            "WHERE tenant_id = $1 AND key = $2 ORDER BY idempotency_key",
            tenant,
            key,
        )
    finally:
        await conn.close()
    return sum(r["delta"] for r in rows), [r["idempotency_key"] for r in rows]


async def counter(quota: Quota, tenant: str, key: str) -> int:
    reply = await quota.caller.CheckQuota(pb.CheckQuotaRequest(tenant_id=tenant, key=key))
    return reply.used


async def record(quota: Quota, event: pb.UsageEvent) -> pb.RecordUsageResponse:
    """One attempt, as a caller sees it (the billing channel would retry UNAVAILABLE by itself)."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{quota.port}") as channel:
        stub = quota_pb2_grpc.QuotaServiceStub(channel)
        return await stub.RecordUsage(
            pb.RecordUsageRequest(event=event),
            metadata=[("authorization", f"Bearer {quota.env.token(STOREFRONT)}")],
        )


@pytest.fixture
async def proxied(env: InfraEnv):
    direct = env.settings(QuotaSettings, "quota").database_url
    async with FaultProxy(direct) as proxy, quota_service(env, database_url=proxy.url, **QUIET) as quota:
        await create_plan(quota, "pro", spec(entitlement("calls", 1000)))
        await subscribe(quota, "acme", "pro")
        yield quota, proxy


async def test_a_record_whose_commit_answer_was_lost_is_counted_once_after_a_retry_with_its_key(
    proxied: tuple[Quota, FaultProxy],
) -> None:
    quota, proxy = proxied
    assert (await record(quota, usage("acme", "calls", 2, "before"))).counted

    proxy.cut_after(b"COMMIT")
    with pytest.raises(grpc.aio.AioRpcError) as lost:
        await record(quota, usage("acme", "calls", 5, "lost-answer"))
    assert proxy.cuts == 1
    assert lost.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "nothing was counted" not in (lost.value.details() or "")  # it was stored
    assert await ledger(quota, "acme", "calls") == (7, ["before", "lost-answer"])
    assert await counter(quota, "acme", "calls") == 7

    retried = await record(quota, usage("acme", "calls", 5, "lost-answer"))
    assert retried.quota.used == 7
    assert await ledger(quota, "acme", "calls") == (7, ["before", "lost-answer"])
    assert await counter(quota, "acme", "calls") == 7


async def test_a_record_whose_commit_never_arrived_ends_stored_and_counted_once_without_a_retry(
    proxied: tuple[Quota, FaultProxy],
) -> None:
    quota, proxy = proxied
    proxy.cut_before(b"COMMIT")
    with pytest.raises(grpc.aio.AioRpcError) as lost:
        await record(quota, usage("acme", "calls", 3, "never-committed"))
    assert lost.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "nothing was counted" not in (lost.value.details() or "")  # the caller cannot know

    async def agreed() -> bool:
        return await ledger(quota, "acme", "calls") == (3, ["never-committed"]) and (
            await counter(quota, "acme", "calls") == 3
        )

    await eventually(agreed, timeout=15)
    replay = await record(quota, usage("acme", "calls", 3, "never-committed"))
    assert not replay.counted and replay.quota.used == 3


class Traffic:
    """Callers of one quota pod, each retrying a usage event with the same key until it is answered."""

    def __init__(self, quota: Quota, tenants: list[str]) -> None:
        self._quota = quota
        self._tenants = tenants
        self.codes: dict[str, Counter[str]] = {"RecordUsage": Counter(), "CheckQuota": Counter()}
        self.answered: dict[str, dict[str, int]] = {tenant: {} for tenant in tenants}  # key -> delta
        self.stopping = asyncio.Event()

    async def _call(self, stub: Any, method: str, request: Any) -> Any:
        try:
            reply = await getattr(stub, method)(request, timeout=5, metadata=self._metadata)
        except grpc.aio.AioRpcError as error:
            self.codes[method][error.code().name] += 1
            return None
        self.codes[method]["OK"] += 1
        return reply

    async def recorder(self, number: int) -> None:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{self._quota.port}") as channel:
            stub = quota_pb2_grpc.QuotaServiceStub(channel)
            sent = 0
            while not self.stopping.is_set():
                tenant = self._tenants[(number + sent) % len(self._tenants)]
                key, delta = f"r{number}-{sent}", 1 + sent % 3
                sent += 1
                request = pb.RecordUsageRequest(event=usage(tenant, "calls", delta, key))
                while True:  # the same key again, until it is answered
                    if await self._call(stub, "RecordUsage", request) is not None:
                        self.answered[tenant][key] = delta
                        break
                    await asyncio.sleep(0.05)

    async def checker(self, number: int) -> None:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{self._quota.port}") as channel:
            stub = quota_pb2_grpc.QuotaServiceStub(channel)
            while not self.stopping.is_set():
                tenant = self._tenants[number % len(self._tenants)]
                await self._call(stub, "CheckQuota", pb.CheckQuotaRequest(tenant_id=tenant, key="calls"))
                await asyncio.sleep(0.01)

    @property
    def _metadata(self) -> list[tuple[str, str]]:
        return [("authorization", f"Bearer {self._quota.env.token(STOREFRONT)}")]


async def test_while_the_database_is_down_checks_answer_records_are_unavailable_and_all_ends_exact(
    private_postgres: tuple[InfraEnv, PostgresCluster],
) -> None:
    env, cluster = private_postgres
    tenants = ["t0", "t1", "t2", "t3"]
    async with quota_service(env, entitlement_cache_ttl=timedelta(seconds=1)) as quota:
        await create_plan(quota, "pro", spec(entitlement("calls", 10**9)))
        for tenant in tenants:
            await subscribe(quota, tenant, "pro")
            await counter(quota, tenant, "calls")  # the counter is in Redis before the outage
        traffic = Traffic(quota, tenants)
        workers = [asyncio.create_task(traffic.recorder(n)) for n in range(8)]
        workers += [asyncio.create_task(traffic.checker(n)) for n in range(4)]
        await asyncio.sleep(1.5)
        before = sum(traffic.codes["RecordUsage"].values())
        async with outage(cluster):
            await asyncio.sleep(6)  # longer than the entitlement cache's TTL
        during = dict(traffic.codes["RecordUsage"])
        await asyncio.sleep(2)
        traffic.stopping.set()
        await asyncio.gather(*workers)
        print("\ncodes seen:", {method: dict(codes) for method, codes in traffic.codes.items()})

        assert sum(during.values()) > before and during.get("UNAVAILABLE", 0) > 0  # the outage was felt
        assert set(traffic.codes["RecordUsage"]) <= {"OK", "UNAVAILABLE"}
        assert set(traffic.codes["CheckQuota"]) == {"OK"}  # read-only mode: checks never stopped
        for tenant in tenants:
            answered = traffic.answered[tenant]
            total, keys = await ledger(quota, tenant, "calls")
            assert keys == sorted(answered)
            assert total == sum(answered.values()) == await counter(quota, tenant, "calls")
