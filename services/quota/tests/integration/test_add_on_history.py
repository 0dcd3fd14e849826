"""A tenant's add-ons keep when they were added and removed; a usage summary carries the stretches
of its period in which the tenant held each one, at the catalog price, for the biller to prorate."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from billing.common.v1 import common_pb2
from billing.quota.v1 import quota_pb2 as pb
from billing_common.clock import ControllableClock
from billing_devtools.testing.plugin import InfraEnv

from .conftest import Quota, create_plan, entitlement, quota_service, spec, subscribe
from .test_usage import summary_request


async def create_add_on(quota: Quota, code: str, price_minor: int) -> None:
    await quota.operator.CreateAddOn(
        pb.CreateAddOnRequest(
            add_on=pb.AddOn(
                code=code,
                name=code.upper(),
                entitlements=[entitlement(f"{code}.seats", 5)],
                price=common_pb2.Money(amount_minor=price_minor, currency="USD"),
            ),
            idempotency_key=f"add-on-{code}",
        )
    )


async def hold(quota: Quota, tenant: str, code: str, attached: bool = True) -> None:
    await quota.operator.SetTenantAddOn(
        pb.SetTenantAddOnRequest(tenant_id=tenant, add_on_code=code, attached=attached)
    )


def stretches(summary: pb.GetUsageSummaryResponse) -> list[tuple[str, int, datetime, datetime]]:
    return [
        (
            a.code,
            a.price.amount_minor,
            a.active_from.ToDatetime(tzinfo=UTC),
            a.active_until.ToDatetime(tzinfo=UTC),
        )
        for a in summary.add_ons
    ]


async def test_a_summary_carries_each_stretch_an_add_on_was_held_clamped_to_its_period(
    env: InfraEnv,
) -> None:
    start = datetime.now(UTC).replace(microsecond=0)
    clock = ControllableClock(start)

    def day(n: float) -> datetime:
        return start + timedelta(days=n)

    async with quota_service(env, clock=clock) as quota:
        await create_plan(quota, "pro", spec(entitlement("api.calls", 100)))
        await create_add_on(quota, "sso", 3000)
        await create_add_on(quota, "audit", 6000)
        for tenant in ("acme", "globex"):
            await subscribe(quota, tenant, "pro")
            await hold(quota, tenant, "sso")
        clock.set(day(2))
        await hold(quota, "globex", "sso", attached=False)
        await hold(quota, "globex", "audit")
        clock.set(day(3))
        await hold(quota, "acme", "sso")  # held already: its stretch keeps the day it began
        await hold(quota, "acme", "audit", attached=False)  # never held: nothing changes
        clock.set(day(4))
        await hold(quota, "globex", "audit", attached=False)
        clock.set(day(5))
        await hold(quota, "globex", "audit")

        asked = [
            summary_request("acme", day(-1), day(10)),
            summary_request("globex", day(-1), day(10)),
            summary_request("globex", day(2.5), day(4.5)),
            summary_request("globex", day(-3), day(-1)),
        ]
        batch = await quota.caller.GetUsageSummaries(pb.GetUsageSummariesRequest(requests=asked))

        acme, globex, middle, before = (result.summary for result in batch.results)
        assert stretches(acme) == [("sso", 3000, start, day(10))]
        assert stretches(globex) == [
            ("sso", 3000, start, day(2)),
            ("audit", 6000, day(2), day(4)),
            ("audit", 6000, day(5), day(10)),
        ]
        assert stretches(middle) == [("audit", 6000, day(2.5), day(4))]
        assert stretches(before) == []
        for request, result in zip(asked, batch.results, strict=True):
            assert result.summary == await quota.caller.GetUsageSummary(request)
        # What the tenant may do follows the add-ons it holds now.
        reply = await quota.caller.GetEntitlements(pb.GetEntitlementsRequest(tenant_id="globex"))
        assert sorted(e.entitlement.key for e in reply.entitlements) == ["api.calls", "audit.seats"]


async def test_an_add_on_removed_the_instant_it_was_added_is_in_no_summary(env: InfraEnv) -> None:
    start = datetime.now(UTC).replace(microsecond=0)
    async with quota_service(env, clock=ControllableClock(start)) as quota:
        await create_plan(quota, "pro", spec(entitlement("api.calls", 100)))
        await create_add_on(quota, "sso", 3000)
        await subscribe(quota, "acme", "pro")
        await hold(quota, "acme", "sso")
        await hold(quota, "acme", "sso", attached=False)
        await hold(quota, "acme", "sso")  # held again from the same instant: a stretch of its own

        summary = await quota.caller.GetUsageSummary(
            summary_request("acme", start - timedelta(days=1), start + timedelta(days=1))
        )

        assert stretches(summary) == [("sso", 3000, start, start + timedelta(days=1))]
