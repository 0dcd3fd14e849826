"""The usage ledger partitioned by month: exact idempotency across partitions, retention by clock.

Each restart of the service migrates, as the migration job does, so it makes and drops the
ledger's partitions as of the test clock.
"""

from datetime import UTC, datetime, timedelta

import asyncpg

from billing.quota.v1 import quota_pb2 as pb
from billing_common.clock import ControllableClock
from billing_devtools.testing.plugin import InfraEnv

from .conftest import Quota, create_plan, entitlement, forget_counters, quota_service, spec, subscribe, usage


def _next_month(instant: datetime) -> datetime:
    return (instant.replace(day=28) + timedelta(days=4)).replace(
        day=1, hour=0, minute=0, second=0, microsecond=0
    )


async def _record(quota: Quota, key: str) -> bool:
    reply = await quota.caller.RecordUsage(pb.RecordUsageRequest(event=usage("acme", "calls", 5, key)))
    return reply.counted


async def _ledger(env: InfraEnv, schema: str) -> tuple[dict[str, str], int]:
    """Each stored record's idempotency key and its partition; how many keys are remembered."""
    conn = await asyncpg.connect(env.infra.postgres_admin_url)
    try:
        rows = await conn.fetch(
            f'SELECT idempotency_key, tableoid::regclass::text AS part FROM "{schema}".usage_records'
        )
        keys = await conn.fetchval(f'SELECT count(*) FROM "{schema}".usage_keys')
        return {r["idempotency_key"]: r["part"].split(".")[-1] for r in rows}, int(keys)
    finally:
        await conn.close()


async def _used(quota: Quota) -> int:
    reply = await quota.caller.CheckQuota(pb.CheckQuotaRequest(tenant_id="acme", key="calls"))
    return reply.used


async def test_a_key_retried_across_a_month_boundary_counts_once(env: InfraEnv) -> None:
    """The retry names no occurred_at, so it would be stored a month later, in another partition."""
    month_end = _next_month(datetime.now(UTC))
    clock = ControllableClock(month_end - timedelta(seconds=1))
    async with quota_service(env, clock=clock) as quota:
        await create_plan(quota, "pro", spec(entitlement("calls", 100)))
        await subscribe(quota, "acme", "pro")
        assert await _record(quota, "k1")
        clock.set(month_end + timedelta(seconds=1))
        assert not await _record(quota, "k1")  # the counters remember it
    async with quota_service(env, clock=clock) as quota:
        await forget_counters(quota)
        assert not await _record(quota, "k1")  # the ledger alone remembers it
        assert await _used(quota) == 0  # the new month's window holds nothing
        stored, keys = await _ledger(env, quota.settings.schema)
        assert stored == {"k1": f"usage_records_p{month_end - timedelta(days=1):%Y%m}"} and keys == 1


async def test_usage_partitions_roll_over_with_the_clock_and_forget_keys_after_the_retention(
    env: InfraEnv,
) -> None:
    first = _next_month(datetime.now(UTC)) + timedelta(days=14)
    clock = ControllableClock(first)
    months = []
    for index in range(4):  # the 15th of four months running, one usage event each
        clock.set(_next_month(clock.now()) + timedelta(days=14) if index else first)
        months.append(f"{clock.now():%Y%m}")
        async with quota_service(env, clock=clock, usage_retention=timedelta(days=62)) as quota:
            if index == 0:
                await create_plan(quota, "pro", spec(entitlement("calls", 100)))
                await subscribe(quota, "acme", "pro")
            assert await _record(quota, f"k{index}")
            assert await _used(quota) == 5

    async with quota_service(env, clock=clock, usage_retention=timedelta(days=62)) as quota:
        stored, keys = await _ledger(env, quota.settings.schema)
        # 62 days before the 15th of the fourth month lies in the second: the first is dropped.
        assert stored == {f"k{i}": f"usage_records_p{months[i]}" for i in (1, 2, 3)}
        assert keys == 3
        await forget_counters(quota)
        assert not await _record(quota, "k1")  # within the retention: still a duplicate
        assert await _record(quota, "k0")  # forgotten with its partition: counts again
