"""What an SRE sees of quota: checks by decision, the counter cache's hit rate, and counters that
drifted from the usage ledger."""

from datetime import timedelta

import pytest
from prometheus_client import REGISTRY
from redis.asyncio import Redis

from billing.quota.v1 import quota_pb2 as pb
from billing_devtools.testing.plugin import InfraEnv, eventually
from quota.adapters import drift
from quota.adapters.counters import RedisCounters
from quota.adapters.drift import CounterAudit
from quota.adapters.metrics import USAGE_METRICS
from quota.adapters.tracking import TrackedReads

from .conftest import Quota, create_plan, entitlement, spec, subscribe, usage


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def check(quota: Quota, key: str, amount: int = 1) -> pb.CheckQuotaResponse:
    return await quota.caller.CheckQuota(pb.CheckQuotaRequest(tenant_id="acme", key=key, amount=amount))


async def test_checks_are_counted_by_decision_and_cache_hits_apart_from_misses(quota: Quota) -> None:
    await create_plan(
        quota, "pro", spec(entitlement("exports", 3), entitlement("calls", 1, pb.OVER_QUOTA_BEHAVIOUR_WARN))
    )
    await subscribe(quota, "acme", "pro")
    await quota.caller.RecordUsage(pb.RecordUsageRequest(event=usage("acme", "calls", 1, "c1")))
    before = {d: sample("quota_checks_total", decision=d) for d in ("allow", "deny", "warn")}
    assert (await check(quota, "exports", 2)).allowed
    assert not (await check(quota, "exports", 4)).allowed
    assert (await check(quota, "calls")).warning
    after = {d: sample("quota_checks_total", decision=d) for d in ("allow", "deny", "warn")}
    assert {d: after[d] - before[d] for d in after} == {"allow": 1, "deny": 1, "warn": 1}

    # The pod keeps a counter it read while Redis tracks it: the next check of it is a hit.
    hits = sample("quota_counter_cache_lookups_total", result="hit")

    async def hit() -> bool:
        await check(quota, "exports")
        return sample("quota_counter_cache_lookups_total", result="hit") > hits

    await eventually(hit)
    assert sample("quota_counter_cache_lookups_total", result="miss") > 0


async def test_a_counter_that_differs_from_the_ledger_is_reported_as_drift(
    quota: Quota, env: InfraEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(drift, "RECHECK_AFTER", timedelta(0))
    await create_plan(quota, "pro", spec(entitlement("calls", 100)))
    await subscribe(quota, "acme", "pro")
    for n in range(3):
        await quota.caller.RecordUsage(pb.RecordUsageRequest(event=usage("acme", "calls", 2, f"c{n}")))
    pool = await env.pool(quota.settings.schema)
    redis = Redis.from_url(quota.settings.redis_url)
    try:
        counters = RedisCounters(redis, quota.settings.namespace, TrackedReads(redis, "", 0), USAGE_METRICS)
        audit = CounterAudit(pool, redis, counters, USAGE_METRICS)
        await audit.audit()
        assert (sample("quota_counter_audit_checked"), sample("quota_counters_drifted")) == (1, 0)

        [key] = [k async for k in redis.scan_iter(match=f"{quota.settings.namespace}:{{acme}}:u:calls:*")]
        await redis.incrby(key, 5)  # Redis counted something the ledger never stored
        await audit.audit()
        assert (sample("quota_counters_drifted"), sample("quota_counter_drift_units")) == (1, 5)
    finally:
        await redis.aclose()
        await pool.close()
