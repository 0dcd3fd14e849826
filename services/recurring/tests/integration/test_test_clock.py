"""Two months of scheduled runs in seconds with the test clock: every frequency billed as it should be."""

from __future__ import annotations

from datetime import UTC, date, datetime

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from billing.common.v1 import common_pb2 as common
from billing.recurring.v1 import recurring_pb2 as pb
from billing_devtools.testing.plugin import eventually

from .conftest import Deps, custom, pb_date, recurring_service

START = date(2031, 2, 1)


def at(instant: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(instant)
    return stamp


@pytest.mark.timeout(180)
async def test_the_scheduler_bills_every_frequency_correctly_over_two_months(deps: Deps) -> None:
    settings = deps.recurring_settings(test_clock=True, max_catch_up_days=70)
    async with recurring_service(settings) as recurring:
        stub = recurring.operator
        await stub.SetClock(pb.SetClockRequest(now=at(datetime(2031, 1, 31, 12, tzinfo=UTC))))
        expected = {
            # amount: (frequency, anchor, charges from 1 February to 31 March 2031)
            1001: (common.BILLING_FREQUENCY_WEEKLY, 0, 9),
            1002: (common.BILLING_FREQUENCY_BIWEEKLY, 0, 5),
            1003: (common.BILLING_FREQUENCY_FOUR_WEEKLY, 0, 3),
            1004: (common.BILLING_FREQUENCY_MONTHLY, 1, 2),
            1005: (common.BILLING_FREQUENCY_MONTHLY, 31, 2),  # 28 February, then 31 March
            1006: (common.BILLING_FREQUENCY_ONE_TIME, 0, 1),
        }
        for amount, (frequency, anchor, _) in expected.items():
            start = date(2031, 2, 10) if frequency == common.BILLING_FREQUENCY_ONE_TIME else START
            await stub.CreateSubscription(custom(f"acct-{amount}", amount, frequency, start, anchor=anchor))
        paused = (
            await stub.CreateSubscription(custom("paused", 1007, common.BILLING_FREQUENCY_WEEKLY, START))
        ).subscription
        await stub.PauseSubscription(pb.PauseSubscriptionRequest(subscription_id=paused.subscription_id))
        await stub.CreateSubscription(custom("tiny", 499, common.BILLING_FREQUENCY_WEEKLY, START))

        moved = await stub.SetClock(pb.SetClockRequest(now=at(datetime(2031, 4, 1, 3, 30, tzinfo=UTC))))
        assert moved.now.ToDatetime(tzinfo=UTC) == datetime(2031, 4, 1, 3, 30, tzinfo=UTC)

        async def caught_up() -> list[pb.Run] | None:
            runs = (await stub.ListRuns(pb.ListRunsRequest(page_size=500))).runs
            last = [r for r in runs if r.billing_date == pb_date(date(2031, 4, 1))]
            done = len(last) == 2 and all(r.state == pb.RUN_STATE_COMPLETED for r in last)
            return list(runs) if done else None

        runs = await eventually(caught_up, timeout=150, interval=0.2)

        in_window = [
            r
            for r in runs
            if date(2031, 2, 1)
            <= date(r.billing_date.year, r.billing_date.month, r.billing_date.day)
            <= date(2031, 4, 1)
        ]
        assert len(in_window) == 2 * 60  # one daily and one monthly run for each date, in order
        counted: dict[int, int] = {}
        for charge in await deps.sandbox_charges():
            counted[charge["amount_minor"]] = counted.get(charge["amount_minor"], 0) + 1
        april = {1001: 0, 1002: 0, 1003: 0, 1004: 1, 1005: 0, 1006: 0}  # 1 April is a monthly due date
        # "tiny" (4.99 weekly, under the 5.00 minimum) is invoiced every week: one week's amount is
        # carried, and charged with the next week's.
        tiny = {998: 4}
        assert counted == {amount: n + april[amount] for amount, (_, _, n) in expected.items()} | tiny
        skipped = await deps.recurring_rows(
            "SELECT count(*) AS n FROM work_items WHERE status = 'skipped' AND detail = $1",
            "below the minimum amount: carried to the next invoice",
        )
        assert skipped[0]["n"] == 5


async def test_the_test_clock_never_moves_past_the_year_3000_and_refusals_leave_it_where_it_was(
    deps: Deps,
) -> None:
    settings = deps.recurring_settings(test_clock=True)
    async with recurring_service(settings) as recurring:
        stub = recurring.operator
        await stub.SetClock(pb.SetClockRequest(now=at(datetime(2999, 12, 25, tzinfo=UTC))))
        with pytest.raises(grpc.aio.AioRpcError) as too_far:
            await stub.AdvanceClock(pb.AdvanceClockRequest(by=Duration(seconds=30 * 86_400)))
        with pytest.raises(grpc.aio.AioRpcError) as year_9999:
            await stub.SetClock(pb.SetClockRequest(now=at(datetime(9999, 12, 31, tzinfo=UTC))))
        now = (await stub.GetClock(pb.GetClockRequest())).now.ToDatetime(tzinfo=UTC)

    assert too_far.value.code() == year_9999.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert now == datetime(2999, 12, 25, tzinfo=UTC)
