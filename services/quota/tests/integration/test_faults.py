"""Faults under quota: a database connection lost at the worst moment, the database stopped."""

from __future__ import annotations

from datetime import timedelta

import asyncpg
import grpc
import pytest

from billing.quota.v1 import quota_pb2 as pb
from billing.quota.v1 import quota_pb2_grpc
from billing_common.testing.faultproxy import FaultProxy
from billing_common.testing.plugin import InfraEnv, eventually
from quota.settings import QuotaSettings

from .conftest import Quota, create_plan, entitlement, quota_service, spec, subscribe, usage

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
            metadata=[("authorization", f"Bearer {quota.env.token('recurring')}")],
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
