"""quota's counters on a three-node Redis Cluster that the test starts itself: exact, from any pod."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from redis.asyncio import Redis
from redis.crc import key_slot

from billing.quota.v1 import quota_pb2 as pb
from billing.quota.v1 import quota_pb2_grpc
from billing_common.grpc_client import open_channel
from billing_devtools.testing.plugin import InfraEnv, eventually

from .conftest import STOREFRONT, Quota, create_plan, entitlement, quota_service, spec, subscribe, usage
from .redis_cluster import redis_cluster

LIMIT = 300
CLIENTS = 50
RECORDS_PER_CLIENT = 24


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[int]]:
    with redis_cluster(Path(tmp_path_factory.mktemp("redis-cluster"))) as ports:
        yield ports


@contextlib.asynccontextmanager
async def two_pods(env: InfraEnv, ports: list[int], **overrides: Any) -> AsyncIterator[tuple[Quota, Quota]]:
    """Two quota pods of one deployment on the cluster (each told of a different node)."""
    async with (
        quota_service(env, redis_url=f"redis://127.0.0.1:{ports[0]}/0", redis_cluster=True, **overrides) as a,
        quota_service(env, redis_url=f"redis://127.0.0.1:{ports[1]}/0", redis_cluster=True, **overrides) as b,
    ):
        yield a, b


async def node_of_each_slot(ports: list[int]) -> dict[int, int]:
    """slot -> port of the primary that serves it, as the cluster says."""
    node = Redis(port=ports[0])
    try:
        ranges = await node.execute_command("CLUSTER", "SLOTS")
    finally:
        await node.aclose()
    return {slot: int(r[2][1]) for r in ranges for slot in range(int(r[0]), int(r[1]) + 1)}


async def tenants_on_every_node(ports: list[int], per_node: int) -> list[str]:
    """Tenant ids whose keys (hash tag `{tenant}`) land on each of the nodes, `per_node` each."""
    owners = await node_of_each_slot(ports)
    chosen: dict[int, list[str]] = {port: [] for port in ports}
    n = 0
    while any(len(names) < per_node for names in chosen.values()):
        tenant = f"tenant-{n}"
        names = chosen[owners[key_slot(tenant.encode())]]
        if len(names) < per_node:
            names.append(tenant)
        n += 1
    return [tenant for names in chosen.values() for tenant in names]


async def keys_per_node(ports: list[int], namespace: str) -> dict[int, int]:
    found = {}
    for port in ports:
        node = Redis(port=port)
        try:
            found[port] = len([key async for key in node.scan_iter(match=f"{namespace}:*")])
        finally:
            await node.aclose()
    return found


async def used(pod: Quota, tenant: str) -> int:
    return (await pod.caller.CheckQuota(pb.CheckQuotaRequest(tenant_id=tenant, key="calls"))).used


async def summarised(pod: Quota, tenant: str) -> int:
    request = pb.GetUsageSummaryRequest(tenant_id=tenant)
    request.period_start.FromDatetime(datetime.now(UTC) - timedelta(days=40))
    request.period_end.FromDatetime(datetime.now(UTC) + timedelta(minutes=1))
    summary = await pod.caller.GetUsageSummary(request)
    return sum(total.quantity for total in summary.totals if total.key == "calls")


async def entitled_everywhere(pods: tuple[Quota, Quota], tenants: list[str]) -> None:
    await create_plan(pods[0], "pro", spec(entitlement("calls", LIMIT)))
    for tenant in tenants:
        await subscribe(pods[0], tenant, "pro")
        for pod in pods:
            await eventually(lambda pod=pod, tenant=tenant: _entitled(pod, tenant))


async def _entitled(pod: Quota, tenant: str) -> bool:
    reply = await pod.caller.GetEntitlements(pb.GetEntitlementsRequest(tenant_id=tenant))
    return not reply.denied


@pytest.mark.timeout(300)
async def test_fifty_concurrent_clients_over_two_pods_never_overshoot_a_deny_limit(
    env: InfraEnv, cluster: list[int]
) -> None:
    async with two_pods(env, cluster) as pods:
        tenants = await tenants_on_every_node(cluster, per_node=2)
        await entitled_everywhere(pods, tenants)
        counted = {tenant: 0 for tenant in tenants}
        denied = {tenant: 0 for tenant in tenants}
        offered = {tenant: 0 for tenant in tenants}
        refusals: list[grpc.StatusCode] = []

        async def client(number: int) -> None:
            pod = pods[number % 2]
            deltas = random.Random(number)
            async with open_channel(f"127.0.0.1:{pod.port}", env.token(STOREFRONT)) as channel:
                stub = quota_pb2_grpc.QuotaServiceStub(channel)
                for n in range(RECORDS_PER_CLIENT):
                    tenant = tenants[(number + n) % len(tenants)]
                    delta = deltas.randint(1, 5)
                    offered[tenant] += delta
                    event = usage(tenant, "calls", delta, f"c{number}-{n}")
                    try:
                        reply = await stub.RecordUsage(pb.RecordUsageRequest(event=event))
                    except grpc.aio.AioRpcError as error:
                        refusals.append(error.code())
                        denied[tenant] += 1
                        continue
                    assert reply.counted and reply.quota.used <= LIMIT
                    counted[tenant] += delta

        await asyncio.gather(*(client(number) for number in range(CLIENTS)))

        assert set(refusals) == {grpc.StatusCode.RESOURCE_EXHAUSTED}

        for tenant in tenants:
            assert offered[tenant] > LIMIT  # every tenant was pushed past its limit
            assert denied[tenant] > 0
            assert LIMIT - 5 < counted[tenant] <= LIMIT
            for pod in pods:
                assert await used(pod, tenant) == counted[tenant]
                assert await summarised(pod, tenant) == counted[tenant]
        spread = await keys_per_node(cluster, pods[0].settings.namespace)
        assert all(keys > 0 for keys in spread.values()), spread  # all three nodes held counters


@pytest.mark.timeout(300)
async def test_records_checks_and_usage_summaries_agree_across_nodes_and_replays_count_once(
    env: InfraEnv, cluster: list[int]
) -> None:
    async with two_pods(env, cluster) as (a, b):
        tenants = await tenants_on_every_node(cluster, per_node=1)
        await entitled_everywhere((a, b), tenants)
        events = [usage(tenant, "calls", 1 + n % 4, f"{tenant}-{n}") for n in range(40) for tenant in tenants]
        expected = {tenant: sum(e.delta for e in events if e.tenant_id == tenant) for tenant in tenants}

        batch = await a.caller.RecordUsageBatch(pb.RecordUsageBatchRequest(events=events))
        assert all(r.outcome == pb.USAGE_OUTCOME_COUNTED for r in batch.results)
        replay = await b.caller.RecordUsageBatch(pb.RecordUsageBatchRequest(events=events[::3]))
        assert all(r.outcome == pb.USAGE_OUTCOME_DUPLICATE for r in replay.results)
        single = await b.caller.RecordUsage(pb.RecordUsageRequest(event=events[1]))
        assert not single.counted

        checks = await b.caller.CheckQuotaBatch(
            pb.CheckQuotaBatchRequest(
                tenant_id=tenants[0], checks=[pb.CheckQuotaRequest(key="calls", amount=1)]
            )
        )
        assert checks.results[0].used == expected[tenants[0]]
        for tenant in tenants:
            for pod in (a, b):
                assert await used(pod, tenant) == expected[tenant]
                assert await summarised(pod, tenant) == expected[tenant]


@pytest.mark.timeout(300)
async def test_a_check_on_one_pod_right_after_a_record_on_another_sees_it(
    env: InfraEnv, cluster: list[int]
) -> None:
    async with two_pods(env, cluster) as (a, b):
        tenants = await tenants_on_every_node(cluster, per_node=1)
        await entitled_everywhere((a, b), tenants)
        total = {tenant: 0 for tenant in tenants}
        for n in range(30):
            tenant = tenants[n % len(tenants)]
            writer, reader = (a, b) if n % 2 else (b, a)
            assert await used(reader, tenant) == total[tenant]
            reply = await writer.caller.RecordUsage(
                pb.RecordUsageRequest(event=usage(tenant, "calls", 2, f"k{n}"))
            )
            assert reply.counted
            total[tenant] += 2
            assert await used(reader, tenant) == total[tenant]  # at once: no waiting


@pytest.mark.timeout(300)
async def test_an_entitlement_change_on_one_pod_reaches_the_other_through_the_clusters_pub_sub(
    env: InfraEnv, cluster: list[int]
) -> None:
    # A cache that would otherwise keep the old limit for an hour.
    async with two_pods(env, cluster, entitlement_cache_ttl=timedelta(hours=1)) as (a, b):
        await entitled_everywhere((a, b), ["acme"])
        before = await b.caller.CheckQuota(pb.CheckQuotaRequest(tenant_id="acme", key="calls"))
        assert before.limit == LIMIT
        await a.operator.SetOverride(
            pb.SetOverrideRequest(
                tenant_id="acme", key="calls", limit=LIMIT * 2, behaviour=pb.OVER_QUOTA_BEHAVIOUR_DENY
            )
        )

        async def raised() -> bool:
            reply = await b.caller.CheckQuota(pb.CheckQuotaRequest(tenant_id="acme", key="calls"))
            return reply.limit == LIMIT * 2

        await eventually(raised, timeout=5)
