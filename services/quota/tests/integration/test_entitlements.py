from datetime import UTC, datetime, timedelta

import grpc
import pytest

from billing.common.v1 import common_pb2
from billing.events.v1 import subscription_pb2 as sub
from billing.quota.v1 import quota_pb2 as pb
from billing_common.clock import ControllableClock
from billing_devtools.testing.plugin import InfraEnv, eventually

from .conftest import Quota, create_plan, entitlement, quota_service, snapshot, spec, subscribe


async def check(quota: Quota, tenant: str, key: str = "api.calls", amount: int = 1) -> pb.CheckQuotaResponse:
    return await quota.caller.CheckQuota(pb.CheckQuotaRequest(tenant_id=tenant, key=key, amount=amount))


async def test_subscription_events_change_what_a_tenant_may_do(quota: Quota, env: InfraEnv) -> None:
    await create_plan(quota, "pro", spec(entitlement("api.calls", 100)))
    assert not (await check(quota, "acme")).allowed  # unknown tenant, no free plan
    await subscribe(quota, "acme", "pro")
    allowed = await check(quota, "acme")
    assert allowed.allowed and allowed.limit == 100

    await env.publish(
        sub.SubscriptionSuspended(subscription=snapshot("acme", "pro", sub.SUBSCRIPTION_STATE_SUSPENDED, 3)),
    )

    async def denied() -> bool:
        reply = await check(quota, "acme")
        return not reply.allowed and reply.reason == "subscription_not_active"

    await eventually(denied)
    # A late, older snapshot (version 2, active) is ignored.
    await env.publish(sub.SubscriptionActivated(subscription=snapshot("acme", "pro", version=2)))
    await subscribe(quota, "marker", "pro")  # events are handled in order: the older one is done too
    entitlements = await quota.caller.GetEntitlements(pb.GetEntitlementsRequest(tenant_id="acme"))
    assert entitlements.denied and entitlements.subscription_status == "suspended"

    # With a free fallback plan in the catalog, the suspended tenant falls back to it.
    await create_plan(quota, "free", spec(entitlement("api.calls", 5), free=True))

    async def on_free_plan() -> bool:
        reply = await check(quota, "acme")
        return reply.allowed and reply.limit == 5

    await eventually(on_free_plan)
    await env.publish(sub.SubscriptionResumed(subscription=snapshot("acme", "pro", version=4)))

    async def back_on_pro() -> bool:
        return (await check(quota, "acme")).limit == 100

    await eventually(back_on_pro)


async def test_entitlements_show_plan_add_ons_overrides_and_grants(quota: Quota) -> None:
    await create_plan(
        quota, "pro", spec(entitlement("api.calls", 100, period=pb.PERIOD_BILLING), entitlement("seats", 3))
    )
    await quota.operator.CreateAddOn(
        pb.CreateAddOnRequest(
            add_on=pb.AddOn(
                code="boost",
                name="Boost",
                entitlements=[entitlement("api.calls", 50)],
                price=common_pb2.Money(amount_minor=100, currency="USD"),
            ),
            idempotency_key="boost",
        )
    )
    await subscribe(quota, "acme", "pro")
    await quota.operator.SetTenantAddOn(
        pb.SetTenantAddOnRequest(tenant_id="acme", add_on_code="boost", attached=True)
    )
    await quota.operator.SetOverride(pb.SetOverrideRequest(tenant_id="acme", key="seats", limit=10))
    grant = pb.CreateGrantRequest(tenant_id="acme", key="api.calls", quantity=25, idempotency_key="g1")
    grant.expires_at.FromDatetime(datetime.now(UTC) + timedelta(days=1))
    first = await quota.operator.CreateGrant(grant)
    again = await quota.operator.CreateGrant(grant)
    assert first.grant.grant_id == again.grant.grant_id

    reply = await quota.caller.GetEntitlements(pb.GetEntitlementsRequest(tenant_id="acme"))
    by_key = {e.entitlement.key: e for e in reply.entitlements}
    calls = by_key["api.calls"]
    assert calls.entitlement.limit == 100 + 50 + 25
    assert [(s.kind, s.limit) for s in calls.sources] == [("plan", 100), ("add_on", 50), ("grant", 25)]
    assert calls.period_end.ToDatetime(tzinfo=UTC) > datetime.now(UTC) + timedelta(
        days=26
    )  # the billing period
    assert by_key["seats"].entitlement.limit == 10
    assert (await check(quota, "acme", "seats", 10)).allowed
    assert not (await check(quota, "acme", "seats", 11)).allowed


async def test_an_expired_grant_is_refused_at_creation(quota: Quota) -> None:
    grant = pb.CreateGrantRequest(tenant_id="acme", key="api.calls", quantity=5, idempotency_key="g")
    grant.expires_at.FromDatetime(datetime.now(UTC) - timedelta(seconds=1))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await quota.operator.CreateGrant(grant)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_a_check_after_the_test_clock_leaps_a_day_is_served_from_the_cache(env: InfraEnv) -> None:
    """The cache's lifetime is wall time: on the suite's test clock a simulated day passes in about
    a second, and a lifetime on that clock expired every resolution at each step (every check
    went back to the database). What is cached still follows the service's clock."""
    clock = ControllableClock(datetime.now(UTC))
    async with quota_service(env, clock=clock, entitlement_cache_ttl=timedelta(minutes=10)) as quota:
        await create_plan(quota, "pro", spec(entitlement("api.calls", 100)))
        await subscribe(quota, "acme", "pro")
        assert (await check(quota, "acme")).limit == 100
        # A change no invalidation announces: only a reload from the database would see it.
        pool = await env.pool(quota.settings.schema)
        await pool.execute(
            """INSERT INTO overrides (tenant_id, key, "limit") VALUES ('acme', 'api.calls', 5)"""
        )

        clock.advance(timedelta(days=1))
        after_a_day = await check(quota, "acme")
        assert after_a_day.allowed and after_a_day.limit == 100


async def test_a_grant_counts_while_the_service_clock_is_inside_it_even_when_wall_time_is_past_it(
    env: InfraEnv,
) -> None:
    """Grants were read by the database's own now(): on a suite clock set a month back, a grant
    valid on that clock but ended in wall time was dropped before the rules could see it."""
    then = datetime.now(UTC) - timedelta(days=30)
    async with quota_service(env, clock=ControllableClock(then)) as quota:
        await create_plan(quota, "pro", spec(entitlement("api.calls", 100)))
        await env.publish(
            sub.SubscriptionCreated(
                subscription=snapshot(
                    "acme", "pro", start=then - timedelta(days=3), end=then + timedelta(days=27)
                )
            ),
        )
        grant = pb.CreateGrantRequest(tenant_id="acme", key="api.calls", quantity=25, idempotency_key="g")
        grant.expires_at.FromDatetime(then + timedelta(days=2))
        await quota.operator.CreateGrant(grant)

        async def limit() -> int:
            return (await check(quota, "acme")).limit

        assert await eventually(limit) == 125
