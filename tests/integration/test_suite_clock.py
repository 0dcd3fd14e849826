"""One test clock for the whole suite: every service and every pod reads the same instant, a
restarted pod keeps it, and AdvanceClock returns once what came due has been done.

Quota, gateway-adapter, two recurring pods and dunning run as real processes with
`<PREFIX>_TEST_CLOCK=true`; the clock is moved through recurring's admin RPCs only.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp
from redis.asyncio import Redis

from billing.common.v1 import common_pb2 as common
from billing.dunning.v1 import dunning_pb2 as dpb
from billing.quota.v1 import quota_pb2 as qpb
from billing.recurring.v1 import recurring_pb2 as rpb
from billing.recurring.v1 import recurring_pb2_grpc
from billing_common.grpc_client import open_channel
from billing_common.settings import CommonSettings
from billing_devtools.testing.plugin import InfraEnv
from billing_devtools.testing.processes import RunningProcess, start_process
from tests.integration.suite import Suite, on_test_clock, running_suite

START = datetime(2031, 5, 4, 12, tzinfo=UTC)
NAMES = ["quota", "gateway-adapter", "recurring", "dunning"]


def at(instant: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(instant)
    return stamp


def days(n: int) -> Duration:
    return Duration(seconds=n * 86_400)


async def second_recurring_pod(suite: Suite) -> RunningProcess:
    settings = suite.env.settings(CommonSettings, "recurring")
    wiring = {
        "RECURRING_QUOTA_ADDR": suite.processes["quota"].address,
        "RECURRING_GATEWAY_ADAPTER_ADDR": suite.processes["gateway-adapter"].address,
    }
    return await start_process("recurring", "RECURRING", settings, {**wiring, **on_test_clock("recurring")})


def recurring_at(suite: Suite, pod: RunningProcess) -> recurring_pb2_grpc.RecurringServiceAsyncStub:
    channel = open_channel(pod.address, suite.env.token("operator"))
    suite.channels.append(channel)
    return recurring_pb2_grpc.RecurringServiceStub(channel)


async def clock_of(stub: recurring_pb2_grpc.RecurringServiceAsyncStub) -> datetime:
    reply = await stub.GetClock(rpb.GetClockRequest())
    assert reply.test_clock
    return reply.now.ToDatetime(tzinfo=UTC)


@pytest.mark.timeout(600)
async def test_two_recurring_pods_and_dunning_share_one_clock_that_a_restarted_pod_keeps(
    env: InfraEnv,
) -> None:
    async with running_suite(env, NAMES, {name: on_test_clock(name) for name in NAMES}) as suite:
        pod_b = await second_recurring_pod(suite)
        try:
            pod_a, other = suite.stub("recurring"), recurring_at(suite, pod_b)
            await pod_a.SetClock(rpb.SetClockRequest(now=at(START)))
            assert await clock_of(other) == START  # the other pod follows at once
            await pod_a.CreateSubscription(
                rpb.CreateSubscriptionRequest(
                    account_id="acct-flaky",
                    merchant_id="merchant-1",
                    custom_amount=common.Money(amount_minor=2500, currency="USD"),
                    frequency=common.BILLING_FREQUENCY_WEEKLY,
                    start_date=common.Date(year=2031, month=5, day=5),
                    # Declines once, then pays: dunning's first retry recovers it.
                    payment_method=common.PaymentMethod(
                        type=common.PAYMENT_METHOD_TYPE_CARD, gateway_token="tok_flaky_1"
                    ),
                    idempotency_key="create-flaky",
                )
            )

            # Advanced through the other pod: it returns once the run and dunning have done their part.
            advanced = await other.AdvanceClock(rpb.AdvanceClockRequest(by=days(1)), timeout=120)
            day_one = START + timedelta(days=1)
            assert advanced.caught_up, list(advanced.still_running)
            assert advanced.now.ToDatetime(tzinfo=UTC) == day_one
            assert await clock_of(pod_a) == await clock_of(other) == day_one
            [invoice] = (await pod_a.ListInvoices(rpb.ListInvoicesRequest(account_id="acct-flaky"))).invoices
            assert invoice.status == rpb.INVOICE_STATUS_PAYMENT_FAILED
            dunning = suite.stub("dunning")
            case = (await dunning.GetCase(dpb.GetCaseRequest(invoice_id=invoice.invoice_id))).dunning_case
            # Dunning opened the case on the suite's clock, not on wall time.
            assert case.opened_at.ToDatetime(tzinfo=UTC) == day_one
            assert case.state == dpb.CASE_STATE_RETRY_SCHEDULED

            # The restarted pod keeps the clock from its own schema, even with the Redis key gone.
            await pod_b.terminate()
            redis = Redis.from_url(env.infra.redis_url)
            try:
                await redis.delete(f"{env.run_id}:test-clock")
            finally:
                await redis.aclose()
            pod_b = await second_recurring_pod(suite)
            assert await clock_of(recurring_at(suite, pod_b)) == day_one

            # Dunning's retry, days ahead, is made when the suite's clock reaches it.
            advanced = await pod_a.AdvanceClock(rpb.AdvanceClockRequest(by=days(5)), timeout=120)
            assert advanced.caught_up, list(advanced.still_running)
            case = (await dunning.GetCase(dpb.GetCaseRequest(case_id=case.case_id))).dunning_case
            assert case.state == dpb.CASE_STATE_RECOVERED
            [attempt] = case.attempts
            assert day_one < attempt.attempted_at.ToDatetime(tzinfo=UTC) <= day_one + timedelta(days=5)
            paid = (await pod_a.GetInvoice(rpb.GetInvoiceRequest(invoice_id=invoice.invoice_id))).invoice
            assert paid.status == rpb.INVOICE_STATUS_PAID
        finally:
            await pod_b.terminate()


def subscription(
    account: str, start_day: int, frequency: common.BillingFrequency.ValueType
) -> rpb.CreateSubscriptionRequest:
    return rpb.CreateSubscriptionRequest(
        account_id=account,
        merchant_id="merchant-1",
        custom_amount=common.Money(amount_minor=1000, currency="USD"),
        frequency=frequency,
        start_date=common.Date(year=2031, month=5, day=start_day),
        payment_method=common.PaymentMethod(type=common.PAYMENT_METHOD_TYPE_CARD, gateway_token="tok_visa"),
        idempotency_key=f"create-{account}",
    )


@pytest.mark.timeout(600)
async def test_advancing_eight_days_bills_each_day_in_order_and_quota_counts_usage_at_the_suites_time(
    env: InfraEnv,
) -> None:
    async with running_suite(env, NAMES, {name: on_test_clock(name) for name in NAMES}) as suite:
        recurring = suite.stub("recurring")
        await recurring.SetClock(rpb.SetClockRequest(now=at(START)))
        weekly, once = common.BILLING_FREQUENCY_WEEKLY, common.BILLING_FREQUENCY_ONE_TIME
        starts = {"acct-5": (5, weekly), "acct-7": (7, weekly), "acct-9": (9, once), "acct-12": (12, weekly)}
        for account, (day, frequency) in starts.items():
            await recurring.CreateSubscription(subscription(account, day, frequency))
        metered = qpb.Entitlement(
            key="api_calls",
            unlimited=True,
            period=qpb.PERIOD_BILLING,
            behaviour=qpb.OVER_QUOTA_BEHAVIOUR_ALLOW,
        )
        spec = qpb.PlanSpec(
            name="Metered",
            price=common.Money(amount_minor=2900, currency="USD"),
            frequency=common.BILLING_FREQUENCY_MONTHLY,
            entitlements=[metered],
        )
        await suite.stub("quota").CreatePlan(
            qpb.CreatePlanRequest(code="metered", spec=spec, idempotency_key="plan-metered")
        )
        on_plan = subscription("acct-plan", 5, common.BILLING_FREQUENCY_MONTHLY)
        on_plan.ClearField("custom_amount")
        on_plan.plan_code, on_plan.billing_anchor_day = "metered", 5
        await recurring.CreateSubscription(on_plan)

        advanced = await recurring.AdvanceClock(rpb.AdvanceClockRequest(by=days(8)), timeout=200)
        assert advanced.caught_up, list(advanced.still_running)
        now = advanced.now.ToDatetime(tzinfo=UTC)
        assert now == START + timedelta(days=8)

        # One daily run for each of the eight days, started in date order, none before its day (the
        # days before START, caught up after the clock was set years ahead, are left out).
        runs = (await recurring.ListRuns(rpb.ListRunsRequest(page_size=1000))).runs
        daily = sorted(
            (
                r
                for r in runs
                if r.kind == rpb.RUN_KIND_DAILY
                and (r.billing_date.year, r.billing_date.month, r.billing_date.day) >= (2031, 5, 5)
            ),
            key=lambda r: r.started_at.ToDatetime(),
        )
        dates = [(r.billing_date.month, r.billing_date.day) for r in daily]
        assert dates == [(5, d) for d in range(5, 13)]
        assert all(r.started_at.ToDatetime(tzinfo=UTC).day >= r.billing_date.day for r in daily)
        assert all(r.state == rpb.RUN_STATE_COMPLETED for r in daily)
        billed: dict[str, list[int]] = {}
        for account in starts:
            invoices = (await recurring.ListInvoices(rpb.ListInvoicesRequest(account_id=account))).invoices
            assert all(i.status == rpb.INVOICE_STATUS_PAID for i in invoices)
            billed[account] = sorted(i.billing_date.day for i in invoices)
        assert billed == {"acct-5": [5, 12], "acct-7": [7], "acct-9": [9], "acct-12": [12]}

        # Quota stands on the same instant: usage stamped by the suite's clock is counted, not
        # refused as coming from the future.
        recorded = await suite.stub("quota").RecordUsage(
            qpb.RecordUsageRequest(
                event=qpb.UsageEvent(
                    tenant_id="acct-plan",
                    key="api_calls",
                    delta=3,
                    idempotency_key="usage-at-suite-time",
                    occurred_at=at(now - timedelta(minutes=1)),
                )
            )
        )
        assert recorded.counted
