"""A quota service on real PostgreSQL, Redis and RabbitMQ, and helpers to act as recurring and operator."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from redis.asyncio import Redis

from billing.common.v1 import common_pb2
from billing.events.v1 import subscription_pb2 as sub
from billing.quota.v1 import quota_pb2 as pb
from billing.quota.v1 import quota_pb2_grpc
from billing_common.clock import Clock
from billing_common.grpc_client import open_channel
from billing_devtools.testing.plugin import InfraEnv, running_service
from billing_devtools.testing.private_servers import private_postgres, private_redis  # noqa: F401 - fixtures
from quota.entrypoints.main import MIGRATIONS, build
from quota.settings import QuotaSettings

# A product service that meters its usage in quota, granted what it needs by configuration.
STOREFRONT = "storefront"
STOREFRONT_ACCESS = (
    "CheckQuota,CheckQuotaBatch,RecordUsage,RecordUsageBatch,GetEntitlements,GetUsageSummary,GetUsageSummaries,"
    "GetPlan,ListPlans,ListAddOns,GetTierPlanMapping+=storefront"
)


class Quota:
    """A running quota service: the operator's and a product service's stubs, and its settings."""

    def __init__(self, env: InfraEnv, settings: QuotaSettings, port: int, operator: Any, caller: Any) -> None:
        self.env = env
        self.settings = settings
        self.port = port
        self.operator = operator
        self.caller = caller


@contextlib.asynccontextmanager
async def quota_service(
    env: InfraEnv, *, clock: Clock | None = None, **overrides: Any
) -> AsyncIterator[Quota]:
    overrides.setdefault("auth_access", STOREFRONT_ACCESS)
    settings = env.settings(QuotaSettings, "quota", **overrides)
    async with running_service(settings, build(settings), MIGRATIONS, clock=clock) as host:
        assert host.consumer is not None
        await asyncio.wait_for(host.consumer.ready.wait(), 30)  # its queue is bound: events reach it
        target = f"127.0.0.1:{host.port}"
        async with (
            open_channel(target, env.token("operator")) as admin,
            open_channel(target, env.token(STOREFRONT)) as other,
        ):
            yield Quota(
                env,
                settings,
                host.port,
                quota_pb2_grpc.QuotaServiceStub(admin),
                quota_pb2_grpc.QuotaServiceStub(other),
            )


@pytest.fixture
async def quota(env: InfraEnv) -> AsyncIterator[Quota]:
    async with quota_service(env) as running:
        yield running


def entitlement(
    key: str, limit: int, behaviour: int = pb.OVER_QUOTA_BEHAVIOUR_DENY, **kw: Any
) -> pb.Entitlement:
    kw.setdefault("period", pb.PERIOD_CALENDAR_MONTH)
    return pb.Entitlement(key=key, limit=limit, behaviour=behaviour, **kw)


def spec(*entitlements: pb.Entitlement, thresholds: tuple[int, ...] = (), free: bool = False) -> pb.PlanSpec:
    return pb.PlanSpec(
        name="Plan",
        price=common_pb2.Money(amount_minor=0 if free else 4900, currency="USD"),
        frequency=common_pb2.BILLING_FREQUENCY_MONTHLY,
        entitlements=list(entitlements),
        threshold_percents=list(thresholds),
        is_free_fallback=free,
    )


async def create_plan(quota: Quota, code: str, plan_spec: pb.PlanSpec) -> pb.Plan:
    reply = await quota.operator.CreatePlan(
        pb.CreatePlanRequest(code=code, spec=plan_spec, idempotency_key=f"create-{code}")
    )
    return reply.plan


def snapshot(
    tenant: str,
    plan_code: str,
    state: int = sub.SUBSCRIPTION_STATE_ACTIVE,
    version: int = 1,
    *,
    subscription_id: str = "",
    start: datetime | None = None,
    end: datetime | None = None,
) -> sub.SubscriptionSnapshot:
    now = datetime.now(UTC)
    message = sub.SubscriptionSnapshot(
        subscription_id=subscription_id or f"sub-{tenant}",
        account_id=tenant,
        status=state,
        plan_code=plan_code,
        version=version,
    )
    message.current_period_start.FromDatetime(start or now - timedelta(days=3))
    message.current_period_end.FromDatetime(end or now + timedelta(days=27))
    return message


async def subscribe(quota: Quota, tenant: str, plan_code: str) -> None:
    """The tenant has an active subscription to the plan, as seen through recurring's event."""
    from billing_devtools.testing.plugin import eventually

    await quota.env.publish(sub.SubscriptionCreated(subscription=snapshot(tenant, plan_code)))

    async def entitled() -> bool:
        reply = await quota.caller.GetEntitlements(pb.GetEntitlementsRequest(tenant_id=tenant))
        return not reply.denied and reply.plan_code == plan_code

    await eventually(entitled)


async def forget_counters(quota: Quota) -> int:
    """Delete every Redis key of this service (only this test's namespace): a Redis restart."""
    redis = Redis.from_url(quota.settings.redis_url)
    try:
        keys = [k async for k in redis.scan_iter(match=f"{quota.settings.namespace}:*", count=1000)]
        if keys:
            await redis.delete(*keys)
        return len(keys)
    finally:
        await redis.aclose()


def usage(tenant: str, key: str, delta: int, idempotency_key: str) -> pb.UsageEvent:
    return pb.UsageEvent(tenant_id=tenant, key=key, delta=delta, idempotency_key=idempotency_key)
