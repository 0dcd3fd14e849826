import asyncio
from datetime import UTC, datetime, timedelta

import asyncpg
import grpc
import pytest
from grpc_status import rpc_status

from billing.common.v1 import common_pb2
from billing.quota.v1 import quota_pb2 as pb
from billing_common.clock import ControllableClock
from billing_devtools.testing.plugin import EventCollector, InfraEnv
from billing_devtools.testing.rpc import field_violations

from .conftest import Quota, create_plan, entitlement, forget_counters, quota_service, spec, subscribe, usage


async def record(quota: Quota, event: pb.UsageEvent) -> pb.RecordUsageResponse:
    return await quota.caller.RecordUsage(pb.RecordUsageRequest(event=event))


async def used(quota: Quota, tenant: str, key: str) -> int:
    reply = await quota.caller.CheckQuota(pb.CheckQuotaRequest(tenant_id=tenant, key=key))
    return reply.used


async def stored_records(env: InfraEnv, settings_schema: str) -> int:
    conn = await asyncpg.connect(env.infra.postgres_admin_url)
    try:
        return int(await conn.fetchval(f'SELECT count(*) FROM "{settings_schema}".usage_records'))
    finally:
        await conn.close()


async def test_deny_refuses_over_the_limit_with_the_check_in_the_details(quota: Quota) -> None:
    await create_plan(quota, "pro", spec(entitlement("exports", 3)))
    await subscribe(quota, "acme", "pro")
    check = await quota.caller.CheckQuota(pb.CheckQuotaRequest(tenant_id="acme", key="exports", amount=3))
    assert check.allowed and check.used == 0 and check.remaining == 3
    assert (await record(quota, usage("acme", "exports", 2, "e1"))).counted
    assert await used(quota, "acme", "exports") == 2  # a check never changes usage
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await record(quota, usage("acme", "exports", 2, "e2"))
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    status = rpc_status.from_call(caught.value)
    assert status is not None
    details = pb.CheckQuotaResponse()
    assert status.details[0].Unpack(details)
    assert (details.allowed, details.used, details.limit, details.remaining) == (False, 2, 3, 1)
    assert await used(quota, "acme", "exports") == 2
    with pytest.raises(grpc.aio.AioRpcError) as not_entitled:
        await record(quota, usage("acme", "other.key", 1, "e3"))
    assert not_entitled.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


async def test_warn_counts_and_warns_allow_counts(quota: Quota) -> None:
    await create_plan(
        quota,
        "pro",
        spec(
            entitlement("calls", 2, pb.OVER_QUOTA_BEHAVIOUR_WARN),
            entitlement("rows", 1, pb.OVER_QUOTA_BEHAVIOUR_ALLOW),
        ),
    )
    await subscribe(quota, "acme", "pro")
    first = await record(quota, usage("acme", "calls", 1, "c1"))
    second = await record(quota, usage("acme", "calls", 2, "c2"))
    assert first.counted and not first.quota.warning
    assert second.counted and second.quota.warning and second.quota.used == 3
    allowed = await record(quota, usage("acme", "rows", 5, "r1"))
    assert allowed.counted and not allowed.quota.warning and allowed.quota.used == 5


async def test_a_key_counts_once_even_after_a_restart_and_a_redis_flush(env: InfraEnv) -> None:
    async with quota_service(env) as quota:
        await create_plan(quota, "pro", spec(entitlement("calls", 100)))
        await subscribe(quota, "acme", "pro")
        assert (await record(quota, usage("acme", "calls", 5, "k1"))).counted
        replay = await record(quota, usage("acme", "calls", 5, "k1"))
        assert not replay.counted and replay.quota.used == 5
        with pytest.raises(grpc.aio.AioRpcError) as conflict:
            await record(quota, usage("acme", "calls", 6, "k1"))
        assert conflict.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    async with quota_service(env) as quota:
        assert await forget_counters(quota) > 0
        replay = await record(quota, usage("acme", "calls", 5, "k1"))
        assert not replay.counted
        assert await used(quota, "acme", "calls") == 5
        assert await stored_records(env, quota.settings.schema) == 1


async def test_counts_are_right_after_the_redis_keys_are_deleted_mid_test(quota: Quota) -> None:
    await create_plan(
        quota, "pro", spec(entitlement("calls", 10), entitlement("seats", 5, period=pb.PERIOD_NONE))
    )
    await subscribe(quota, "acme", "pro")
    for index in range(4):
        await record(quota, usage("acme", "calls", 2, f"c{index}"))
    await record(quota, usage("acme", "seats", 3, "s1"))
    await forget_counters(quota)
    assert await used(quota, "acme", "calls") == 8
    await forget_counters(quota)
    with pytest.raises(grpc.aio.AioRpcError):
        await record(quota, usage("acme", "calls", 3, "c-over"))  # 8 + 3 > 10, rebuilt before the check
    assert (await record(quota, usage("acme", "seats", -2, "s2"))).quota.used == 1
    await forget_counters(quota)
    assert await used(quota, "acme", "seats") == 1


async def test_fifty_concurrent_clients_never_overshoot_a_deny_limit(quota: Quota, env: InfraEnv) -> None:
    await create_plan(quota, "pro", spec(entitlement("calls", 37)))
    await subscribe(quota, "acme", "pro")

    codes: list[grpc.StatusCode] = []

    async def client(number: int) -> tuple[int, int]:
        counted = denied = 0
        for attempt in range(3):
            try:
                await record(quota, usage("acme", "calls", 1, f"client{number}-{attempt}"))
                counted += 1
            except grpc.aio.AioRpcError as error:
                codes.append(error.code())
                denied += 1
        return counted, denied

    results = await asyncio.gather(*(client(n) for n in range(50)))
    assert sum(c for c, _ in results) == 37
    assert sum(d for _, d in results) == 150 - 37
    assert set(codes) == {grpc.StatusCode.RESOURCE_EXHAUSTED}
    assert await used(quota, "acme", "calls") == 37
    assert await stored_records(env, quota.settings.schema) == 37


async def test_thresholds_are_published_once_per_period(quota: Quota, env: InfraEnv) -> None:
    await create_plan(
        quota, "pro", spec(entitlement("calls", 10, pb.OVER_QUOTA_BEHAVIOUR_WARN), thresholds=(80, 100))
    )
    await subscribe(quota, "acme", "pro")
    async with EventCollector(env.infra.amqp_url, env.exchange, ["quota.*", "plan.*"]) as events:
        await record(quota, usage("acme", "calls", 7, "a"))
        await record(quota, usage("acme", "calls", 2, "b"))  # 9: crosses 80
        await forget_counters(quota)  # rebuilt at 9: nothing is crossed again
        await record(quota, usage("acme", "calls", 1, "c"))  # 10: crosses 100
        await record(quota, usage("acme", "calls", 1, "c"))  # a replay crosses nothing
        await record(quota, usage("acme", "calls", 5, "d"))  # 16: over, still once
        crossed = await events.wait_for("quota.threshold_crossed", count=2)
        # The outbox is relayed in order: once this later event is out, every crossing is too.
        await create_plan(quota, "marker", spec(entitlement("calls", 1)))
        await events.wait_for("plan.created", lambda e: e.plan_code == "marker")
    assert sorted((e.threshold_percent, e.used, e.limit) for e in crossed) == [(80, 9, 10), (100, 10, 10)]
    assert len(events.of_type("quota.threshold_crossed")) == 2


async def test_usage_summary_matches_the_recorded_events(quota: Quota) -> None:
    priced = entitlement(
        "api.calls",
        0,
        pb.OVER_QUOTA_BEHAVIOUR_ALLOW,
        unlimited=True,
        included_quantity=1000,
        unit_price=common_pb2.Decimal(value="0.0025"),
    )
    await create_plan(quota, "pro", spec(priced, entitlement("seats", 10, period=pb.PERIOD_NONE)))
    await subscribe(quota, "acme", "pro")
    start = datetime.now(UTC) - timedelta(minutes=5)
    events = [usage("acme", "api.calls", 125, f"call-{i}") for i in range(10)]  # 1250
    late = usage("acme", "api.calls", 1, "too-late")
    late.occurred_at.FromDatetime(datetime.now(UTC) - timedelta(days=70))  # its month closed long ago
    events += [usage("acme", "seats", 4, "seat-1"), usage("acme", "api.calls", 1, "call-0"), late]
    batch = await quota.caller.RecordUsageBatch(pb.RecordUsageBatchRequest(events=events))
    outcomes = [r.outcome for r in batch.results]
    # The reused key with another delta and the event of a closed period are refused.
    assert outcomes == [pb.USAGE_OUTCOME_COUNTED] * 11 + [pb.USAGE_OUTCOME_INVALID] * 2
    request = pb.GetUsageSummaryRequest(tenant_id="acme")
    request.period_start.FromDatetime(start)
    request.period_end.FromDatetime(datetime.now(UTC) + timedelta(minutes=1))
    summary = await quota.caller.GetUsageSummary(request)
    totals = {t.key: t for t in summary.totals}
    calls = totals["api.calls"]
    assert (calls.quantity, calls.included_quantity, calls.billable_quantity) == (1250, 1000, 250)
    assert calls.amount.amount_minor == 62  # 250 x 0.0025 USD = 62.5 cents, half-even
    assert totals["seats"].quantity == 4 and totals["seats"].amount.amount_minor == 0
    assert summary.total_amount == common_pb2.Money(amount_minor=62, currency="USD")


def summary_request(tenant: str, start: datetime | None, end: datetime) -> pb.GetUsageSummaryRequest:
    request = pb.GetUsageSummaryRequest(tenant_id=tenant)
    if start is not None:
        request.period_start.FromDatetime(start)
    request.period_end.FromDatetime(end)
    return request


async def test_summaries_of_many_tenants_in_one_call_equal_one_call_per_tenant(quota: Quota) -> None:
    priced = entitlement(
        "api.calls",
        0,
        pb.OVER_QUOTA_BEHAVIOUR_ALLOW,
        unlimited=True,
        included_quantity=100,
        unit_price=common_pb2.Decimal(value="0.0025"),
    )
    await create_plan(quota, "pro", spec(priced, entitlement("seats", 10, period=pb.PERIOD_NONE)))
    await create_plan(quota, "basic", spec(entitlement("exports", 1000)))
    for tenant, plan in (("acme", "pro"), ("globex", "pro"), ("hooli", "basic")):
        await subscribe(quota, tenant, plan)
    now = datetime.now(UTC)
    events = [usage("acme", "api.calls", 70, f"acme-{i}") for i in range(5)]  # 350: 250 billable
    events += [usage("globex", "api.calls", 40, "globex-1"), usage("globex", "seats", 3, "globex-2")]
    events += [usage("hooli", "exports", 9, "hooli-1")]
    await quota.caller.RecordUsageBatch(pb.RecordUsageBatchRequest(events=events))
    asked = [
        summary_request("acme", now - timedelta(minutes=5), now + timedelta(minutes=1)),
        summary_request("globex", now - timedelta(minutes=5), now + timedelta(minutes=1)),
        summary_request("hooli", now - timedelta(minutes=5), now + timedelta(minutes=1)),
        # acme again over a period before any usage: no totals.
        summary_request("acme", now - timedelta(days=2), now - timedelta(days=1)),
        summary_request("initech", now - timedelta(minutes=5), now + timedelta(minutes=1)),  # no plan
        summary_request("acme", None, now),  # no start
    ]
    batch = await quota.caller.GetUsageSummaries(pb.GetUsageSummariesRequest(requests=asked))
    assert len(batch.results) == len(asked)
    for request, result in zip(asked[:4], batch.results[:4], strict=True):
        assert result.summary == await quota.caller.GetUsageSummary(request)
        assert not result.error
    assert batch.results[0].summary.total_amount == common_pb2.Money(amount_minor=62, currency="USD")
    assert [(t.key, t.quantity) for t in batch.results[1].summary.totals] == [("api.calls", 40), ("seats", 3)]
    assert not batch.results[3].summary.totals
    for request, result, code in zip(
        asked[4:],
        batch.results[4:],
        (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.INVALID_ARGUMENT),
        strict=True,
    ):
        assert not result.HasField("summary") and result.code == code.value[0]
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await quota.caller.GetUsageSummary(request)
        assert refused.value.code() == code and refused.value.details() == result.error


async def test_a_batch_across_tenants_and_script_calls_counts_in_order(quota: Quota) -> None:
    await create_plan(quota, "pro", spec(entitlement("exports", 1000)))
    await subscribe(quota, "acme", "pro")
    await subscribe(quota, "globex", "pro")
    # 1,200 events of acme (three script calls of at most 500) interleaved with 300 of globex.
    events = []
    for i in range(1200):
        events.append(usage("acme", "exports", 1, f"a{i}"))
        if i % 4 == 0:
            events.append(usage("globex", "exports", 2, f"g{i}"))
    batch = await quota.caller.RecordUsageBatch(pb.RecordUsageBatchRequest(events=events))
    acme = [r for r in batch.results if r.idempotency_key.startswith("a")]
    globex = [r for r in batch.results if r.idempotency_key.startswith("g")]
    # Answers come back in the events' order; the first 1,000 of acme fit, the rest are denied.
    assert [r.idempotency_key for r in batch.results] == [e.idempotency_key for e in events]
    assert [r.outcome for r in acme] == [pb.USAGE_OUTCOME_COUNTED] * 1000 + [pb.USAGE_OUTCOME_DENIED] * 200
    assert [r.quota.used for r in acme[:1000]] == list(range(1, 1001))
    assert all(r.outcome == pb.USAGE_OUTCOME_COUNTED for r in globex) and globex[-1].quota.used == 600
    assert await used(quota, "acme", "exports") == 1000
    assert await used(quota, "globex", "exports") == 600


async def test_one_tenants_batch_over_several_counters_keeps_each_apart(quota: Quota) -> None:
    await create_plan(
        quota,
        "pro",
        spec(
            entitlement("exports", 3),
            entitlement("api.calls", 2, pb.OVER_QUOTA_BEHAVIOUR_ALLOW, period=pb.PERIOD_CALENDAR_DAY),
            entitlement("seats", 5, period=pb.PERIOD_NONE),
        ),
    )
    await subscribe(quota, "acme", "pro")
    events = [
        usage("acme", "exports", 2, "e1"),
        usage("acme", "api.calls", 3, "c1"),
        usage("acme", "seats", 4, "s1"),
        usage("acme", "exports", 2, "e2"),  # 4 > 3: denied
        usage("acme", "exports", 2, "e1"),  # the same event again
        usage("acme", "exports", 1, "c1"),  # c1 already names another event
        usage("acme", "seats", -5, "s2"),  # below zero
        usage("acme", "seats", -3, "s3"),
        usage("acme", "exports", 1, "e3"),
        usage("acme", "api.calls", 1, "c2"),
    ]
    batch = await quota.caller.RecordUsageBatch(pb.RecordUsageBatchRequest(events=events))
    outcomes = [(r.idempotency_key, r.outcome, r.quota.used) for r in batch.results]
    counted, denied = pb.USAGE_OUTCOME_COUNTED, pb.USAGE_OUTCOME_DENIED
    duplicate, invalid = pb.USAGE_OUTCOME_DUPLICATE, pb.USAGE_OUTCOME_INVALID
    assert [o[:2] for o in outcomes] == [
        ("e1", counted),
        ("c1", counted),
        ("s1", counted),
        ("e2", denied),
        ("e1", duplicate),
        ("c1", invalid),
        ("s2", invalid),
        ("s3", counted),
        ("e3", counted),
        ("c2", counted),
    ]
    assert [o[2] for o in outcomes if o[1] == counted] == [2, 3, 4, 1, 3, 4]
    assert (await used(quota, "acme", "exports"), await used(quota, "acme", "api.calls")) == (3, 4)
    assert await used(quota, "acme", "seats") == 1


async def test_a_bad_check_is_refused_with_its_field(quota: Quota) -> None:
    await create_plan(quota, "pro", spec(entitlement("exports", 3)))
    await subscribe(quota, "acme", "pro")
    refusals = {
        "amount": pb.CheckQuotaRequest(tenant_id="acme", key="exports", amount=-1),
        "key": pb.CheckQuotaRequest(tenant_id="acme"),
        "tenant_id": pb.CheckQuotaRequest(key="exports"),
    }
    for field, request in refusals.items():
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await quota.caller.CheckQuota(request)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert list(field_violations(caught.value)) == [field]
    batch = pb.CheckQuotaBatchRequest(
        tenant_id="acme",
        checks=[pb.CheckQuotaRequest(key="exports"), pb.CheckQuotaRequest(key="exports", amount=-2)],
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await quota.caller.CheckQuotaBatch(batch)
    assert field_violations(caught.value) == {"checks[1].amount": "must not be negative"}
    with pytest.raises(grpc.aio.AioRpcError) as no_tenant:
        await quota.caller.CheckQuotaBatch(pb.CheckQuotaBatchRequest())
    assert list(field_violations(no_tenant.value)) == ["tenant_id"]


async def test_checks_follow_the_clock_across_midnight_and_back(env: InfraEnv) -> None:
    """A check keeps the window it worked out for a key only while the clock stays inside it."""
    midnight = (datetime.now(UTC) + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    clock = ControllableClock(midnight - timedelta(seconds=1))
    async with quota_service(env, clock=clock) as quota:
        await create_plan(quota, "daily", spec(entitlement("exports", 3, period=pb.PERIOD_CALENDAR_DAY)))
        await subscribe(quota, "acme", "daily")
        assert (await record(quota, usage("acme", "exports", 2, "late-evening"))).counted
        request = pb.CheckQuotaRequest(tenant_id="acme", key="exports", amount=2)

        async def check() -> tuple[bool, int, datetime]:
            reply = await quota.caller.CheckQuota(request)
            return reply.allowed, reply.used, reply.period_end.ToDatetime(tzinfo=UTC)

        assert await check() == (False, 2, midnight)
        clock.set(midnight)
        assert await check() == (True, 0, midnight + timedelta(days=1))
        clock.set(midnight - timedelta(seconds=1))
        assert await check() == (False, 2, midnight)
