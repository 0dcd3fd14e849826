import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from billing.common.v1 import common_pb2
from billing.quota.v1 import quota_pb2 as pb
from billing_devtools.testing.plugin import EventCollector, InfraEnv
from billing_devtools.testing.rpc import every_page

from .conftest import Quota, create_plan, entitlement, spec


async def test_plans_are_versioned_and_old_versions_stay_readable(quota: Quota, env: InfraEnv) -> None:
    async with EventCollector(env.infra.amqp_url, env.exchange, ["plan.*"]) as events:
        v1 = await create_plan(quota, "pro", spec(entitlement("api.calls", 1000, unit_price=None)))
        request = pb.UpdatePlanRequest(
            code="pro", spec=spec(entitlement("api.calls", 5000)), idempotency_key="raise-limit"
        )
        v2 = (await quota.operator.UpdatePlan(request)).plan
        replay = (await quota.operator.UpdatePlan(request)).plan
        await events.wait_for("plan.created", lambda e: e.plan_code == "pro")
        updated = await events.wait_for("plan.updated", lambda e: e.plan_code == "pro")
    assert (v1.version, v2.version, replay.version) == (1, 2, 2)
    assert len(updated) == 1 and updated[0].previous_version == 1
    current = (await quota.caller.GetPlan(pb.GetPlanRequest(code="pro"))).plan
    first = (await quota.caller.GetPlan(pb.GetPlanRequest(code="pro", version=1))).plan
    assert current.entitlements[0].limit == 5000
    assert first.entitlements[0].limit == 1000


async def test_a_create_is_idempotent_and_a_reused_key_with_another_request_fails(quota: Quota) -> None:
    request = pb.CreatePlanRequest(code="lite", spec=spec(entitlement("seats", 3)), idempotency_key="k1")
    first = await quota.operator.CreatePlan(request)
    again = await quota.operator.CreatePlan(request)
    assert first.plan == again.plan
    other = pb.CreatePlanRequest(code="lite2", spec=spec(entitlement("seats", 3)), idempotency_key="k1")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await quota.operator.CreatePlan(other)
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    with pytest.raises(grpc.aio.AioRpcError) as exists:
        await quota.operator.CreatePlan(
            pb.CreatePlanRequest(code="lite", spec=spec(entitlement("seats", 3)), idempotency_key="k2")
        )
    assert exists.value.code() == grpc.StatusCode.ALREADY_EXISTS


async def test_a_bad_plan_is_refused_with_every_field_violation(quota: Quota) -> None:
    bad = spec(
        entitlement("api.calls", -1), entitlement("api.calls", 5, unit_price=common_pb2.Decimal(value="x"))
    )
    bad.price.currency = "XYZ"
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await quota.operator.CreatePlan(pb.CreatePlanRequest(code="bad", spec=bad, idempotency_key="b"))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    status = rpc_status.from_call(caught.value)
    assert status is not None
    request = error_details_pb2.BadRequest()
    status.details[0].Unpack(request)
    # The contract's rules are checked at the boundary, before the catalog's own (a key used twice).
    assert {v.field for v in request.field_violations} == {
        "spec.price.currency",
        "spec.entitlements[0].limit",
        "spec.entitlements[1].unit_price.value",
    }
    twice = spec(entitlement("api.calls", 1), entitlement("api.calls", 5))
    with pytest.raises(grpc.aio.AioRpcError) as duplicate:
        await quota.operator.CreatePlan(pb.CreatePlanRequest(code="bad", spec=twice, idempotency_key="b2"))
    assert duplicate.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    status = rpc_status.from_call(duplicate.value)
    assert status is not None
    status.details[0].Unpack(request)
    assert {v.field for v in request.field_violations} == {"spec.entitlements[1].key"}
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await quota.caller.GetPlan(pb.GetPlanRequest(code="bad"))
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND


async def test_list_pages_retire_add_ons_tiers_and_access(quota: Quota, env: InfraEnv) -> None:
    for code in ("a", "b", "c"):
        await create_plan(quota, code, spec(entitlement("seats", 1)))
    page = await quota.caller.ListPlans(pb.ListPlansRequest(page_size=2))
    rest = await quota.caller.ListPlans(pb.ListPlansRequest(page_size=2, page_token=page.next_page_token))
    assert [p.code for p in page.plans] + [p.code for p in rest.plans] == ["a", "b", "c"]
    assert rest.next_page_token == ""
    await quota.operator.RetirePlan(pb.RetirePlanRequest(code="b"))
    active = await quota.caller.ListPlans(pb.ListPlansRequest())
    assert [p.code for p in active.plans] == ["a", "c"]
    with pytest.raises(grpc.aio.AioRpcError) as retired:
        await quota.operator.UpdatePlan(
            pb.UpdatePlanRequest(code="b", spec=spec(entitlement("seats", 2)), idempotency_key="u")
        )
    assert retired.value.code() == grpc.StatusCode.FAILED_PRECONDITION

    add_on = pb.AddOn(
        code="more-seats",
        name="More seats",
        price=common_pb2.Money(amount_minor=500, currency="USD"),
        entitlements=[entitlement("seats", 10)],
    )
    await quota.operator.CreateAddOn(pb.CreateAddOnRequest(add_on=add_on, idempotency_key="ao"))
    assert [a.code for a in (await quota.caller.ListAddOns(pb.ListAddOnsRequest())).add_ons] == ["more-seats"]

    mapping = [
        pb.TierPlan(tier=common_pb2.TIER_PRO, plan_code="c"),
        pb.TierPlan(tier=common_pb2.TIER_LITE, plan_code="a"),
    ]
    await quota.operator.SetTierPlanMapping(pb.SetTierPlanMappingRequest(mappings=mapping))
    got = await quota.caller.GetTierPlanMapping(pb.GetTierPlanMappingRequest())
    assert {(m.tier, m.plan_code) for m in got.mappings} == {
        (common_pb2.TIER_PRO, "c"),
        (common_pb2.TIER_LITE, "a"),
    }
    with pytest.raises(grpc.aio.AioRpcError) as denied:
        await quota.caller.CreatePlan(pb.CreatePlanRequest(code="x", spec=spec(), idempotency_key="x"))
    assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED


PLAN_CODES = [f"plan-{n}" for n in range(8)]
RETIRED = {"plan-1", "plan-4", "plan-7"}


@pytest.fixture
async def catalog(quota: Quota) -> Quota:
    for code in reversed(PLAN_CODES):
        await create_plan(quota, code, spec(entitlement("seats", 1)))
    for code in RETIRED:
        await quota.operator.RetirePlan(pb.RetirePlanRequest(code=code))
    return quota


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.integers(min_value=0, max_value=4), min_size=1, max_size=4), st.booleans())
async def test_listing_plans_page_by_page_gives_each_plan_of_the_filter_once_in_code_order(
    catalog: Quota, sizes: list[int], include_retired: bool
) -> None:
    request = pb.ListPlansRequest(include_retired=include_retired)
    listed = await every_page(catalog.caller.ListPlans, request, "plans", sizes)
    assert [p.code for p in listed] == [c for c in PLAN_CODES if include_retired or c not in RETIRED]
