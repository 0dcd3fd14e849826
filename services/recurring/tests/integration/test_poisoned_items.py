"""No bad record stalls billing: with the test clock, a poisoned item never keeps its run RUNNING;
the run completes with the item failed (the payment service refused it) or parked (it kept failing
for a reason of ours), and the runs of the next dates are created and bill everyone else."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from typing import Any

import pytest

from billing.common.v1 import common_pb2 as common
from billing.quota.v1 import quota_pb2 as q
from billing.quota.v1 import quota_pb2_grpc
from billing.recurring.v1 import recurring_pb2 as pb
from billing_common import db
from billing_common.grpc_client import open_channel
from billing_devtools.testing.plugin import EventCollector, InfraEnv, eventually
from billing_devtools.testing.rpc import every_page

from .conftest import Deps, custom, pb_date, recurring_service, run_until_settled
from .test_test_clock import at

DAY = date(2031, 5, 5)
WEEKLY = common.BILLING_FREQUENCY_WEEKLY
MONTHLY = common.BILLING_FREQUENCY_MONTHLY
# Passes the Luhn check: a card number, where only a gateway token belongs.
CARD_NUMBER = "4242424242424242"


async def run_of(stub: Any, day: date, kind: int) -> pb.Run | None:
    runs = (await stub.ListRuns(pb.ListRunsRequest(page_size=200))).runs
    return next((r for r in runs if r.billing_date == pb_date(day) and r.kind == kind), None)


async def completed_run(stub: Any, day: date, kind: int = pb.RUN_KIND_DAILY, timeout: float = 60) -> pb.Run:
    async def done() -> pb.Run | None:
        found = await run_of(stub, day, kind)
        return found if found is not None and found.state == pb.RUN_STATE_COMPLETED else None

    result: pb.Run = await eventually(done, timeout=timeout, interval=0.2)
    return result


async def poison(deps: Deps, sql: str, *args: Any) -> None:
    await deps.recurring_rows(sql, *args)


@pytest.mark.timeout(180)
async def test_a_card_number_token_and_bad_plan_data_never_keep_a_run_running(
    env: InfraEnv, deps: Deps
) -> None:
    settings = deps.recurring_settings(test_clock=True, max_catch_up_days=10, item_max_failures=3)
    async with (
        recurring_service(settings) as recurring,
        EventCollector(env.infra.amqp_url, env.exchange, ["invoice.*", "subscription.*", "run.*"]) as events,
    ):
        stub = recurring.operator
        await stub.SetClock(pb.SetClockRequest(now=at(datetime(2031, 5, 4, 12, tzinfo=UTC))))
        healthy = [
            (await stub.CreateSubscription(custom(f"healthy-{n}", 1000 + n, WEEKLY, DAY))).subscription
            for n in range(2)
        ]
        pan = (await stub.CreateSubscription(custom("pan", 2000, WEEKLY, DAY))).subscription
        lower = (await stub.CreateSubscription(custom("lower", 3000, WEEKLY, DAY))).subscription
        # Written past the RPC edge, as data already stored or coming from another path would be.
        await poison(
            deps,
            "UPDATE subscriptions SET gateway_token = $2 WHERE subscription_id = $1",
            pan.subscription_id,
            CARD_NUMBER,
        )
        await poison(
            deps,
            "UPDATE subscriptions SET currency = 'usd' WHERE subscription_id = $1",
            lower.subscription_id,
        )

        await stub.SetClock(pb.SetClockRequest(now=at(datetime.combine(DAY, time(4), UTC))))
        run = await completed_run(stub, DAY)

        assert (run.counts.due, run.counts.charged, run.counts.failed, run.counts.parked) == (4, 2, 1, 1)
        # The card number was refused by gateway-adapter: an answer, so the item failed with a
        # merchant/configuration failure and dunning hears of it; the customer is not past due.
        [refused] = await events.wait_for(
            "invoice.payment_failed", lambda e: e.invoice.subscription_id == pan.subscription_id
        )
        assert refused.failure_type == common.FAILURE_TYPE_MERCHANT
        assert refused.decline_code == "refused_invalid_argument"
        assert not refused.retryable
        current = await stub.GetSubscription(pb.GetSubscriptionRequest(subscription_id=pan.subscription_id))
        assert current.subscription.status == pb.SUBSCRIPTION_STATUS_ACTIVE
        assert events.of_type("subscription.past_due") == []
        [item] = await deps.recurring_rows(
            "SELECT status, detail FROM work_items WHERE subscription_id = $1", pan.subscription_id
        )
        assert item["status"] == "failed" and "INVALID_ARGUMENT" in item["detail"]
        assert CARD_NUMBER not in item["detail"]
        # The record that cannot even be read was tried three times, then parked with its reason.
        [parked] = await deps.recurring_rows(
            "SELECT status, detail, failures FROM work_items WHERE subscription_id = $1",
            lower.subscription_id,
        )
        assert parked["status"] == "parked" and parked["failures"] == 3
        assert "CurrencyError" in parked["detail"]
        [completed] = await events.wait_for("run.completed", lambda e: e.run_id == run.run_id)
        assert completed.counts.parked == 1 and completed.counts.failed == 1
        # The run's items as people review them: each one's outcome, gateway and reason, page by page.
        listed = await every_page(
            stub.ListRunItems, pb.ListRunItemsRequest(run_id=run.run_id), "items", [1, 3]
        )
        items = {i.subscription_id: i for i in listed}
        assert len(listed) == len(items) == 4
        assert items[lower.subscription_id].status == pb.RUN_ITEM_STATUS_PARKED
        assert "CurrencyError" in items[lower.subscription_id].reason
        assert items[pan.subscription_id].status == pb.RUN_ITEM_STATUS_FAILED
        assert "INVALID_ARGUMENT" in items[pan.subscription_id].reason
        assert CARD_NUMBER not in items[pan.subscription_id].reason
        for sub in healthy:
            item = items[sub.subscription_id]
            assert (item.status, item.gateway, item.reason) == (
                pb.RUN_ITEM_STATUS_CHARGED,
                "sandbox-card",
                "paid",
            )
            assert item.invoice_id and item.due_date == pb_date(DAY)

        # A week on, the scheduler has created every date's run and billed the healthy ones again.
        next_week = DAY + timedelta(days=7)
        await stub.SetClock(pb.SetClockRequest(now=at(datetime.combine(next_week, time(4), UTC))))
        later = await completed_run(stub, next_week)
        assert (later.counts.charged, later.counts.failed) == (2, 1)
        for day in (DAY + timedelta(days=n) for n in range(1, 7)):
            between = await run_of(stub, day, pb.RUN_KIND_DAILY)
            assert between is not None and between.state == pb.RUN_STATE_COMPLETED
        charged = await deps.sandbox_charges()
        assert sorted(c["amount_minor"] for c in charged) == [1000, 1000, 1001, 1001]
        assert all(CARD_NUMBER not in c["token"] for c in charged)
        for sub in healthy:
            invoices = (
                await stub.ListInvoices(pb.ListInvoicesRequest(subscription_id=sub.subscription_id))
            ).invoices
            assert [i.status for i in invoices] == [pb.INVOICE_STATUS_PAID] * 2


def plan(code: str, unit_price: str) -> q.CreatePlanRequest:
    return q.CreatePlanRequest(
        code=code,
        idempotency_key=f"plan-{code}",
        spec=q.PlanSpec(
            name=code,
            price=common.Money(amount_minor=1000, currency="USD"),
            frequency=MONTHLY,
            entitlements=[
                q.Entitlement(
                    key="api.calls",
                    limit=1000,
                    period=q.PERIOD_BILLING,
                    behaviour=q.OVER_QUOTA_BEHAVIOUR_ALLOW,
                    included_quantity=0,
                    unit_price=common.Decimal(value=unit_price),
                )
            ],
        ),
    )


def on_plan(account: str, code: str, start: date) -> pb.CreateSubscriptionRequest:
    return pb.CreateSubscriptionRequest(
        account_id=account,
        merchant_id="merchant-1",
        plan_code=code,
        start_date=pb_date(start),
        billing_anchor_day=start.day,
        payment_method=common.PaymentMethod(
            type=common.PAYMENT_METHOD_TYPE_CARD, gateway_token="tok_success"
        ),
        idempotency_key=f"create-{account}",
    )


@pytest.mark.timeout(240)
async def test_a_usage_summary_that_fails_parks_the_item_and_later_runs_bill_everyone_else(
    env: InfraEnv, deps: Deps
) -> None:
    """A unit price of 1e999999 stored in quota's catalog makes its subscriber's usage summary fail."""
    settings = deps.recurring_settings(test_clock=True, max_catch_up_days=3, item_max_failures=3)
    async with (
        open_channel(deps.quota.address, env.token("operator")) as channel,
        recurring_service(settings) as recurring,
    ):
        quota = quota_pb2_grpc.QuotaServiceStub(channel)
        stub = recurring.operator
        await quota.CreatePlan(plan("metered", "0.01"))
        await quota.CreatePlan(plan("broken", "0.01"))
        admin = await deps.admin()
        try:
            quota_plans = f"{db.quote_ident(f'quota_{env.run_id}')}.plans"
            await admin.execute(
                f"""UPDATE {quota_plans}
                    SET entitlements = jsonb_set(entitlements, '{{0,unit_price}}', '"1e999999"')
                    WHERE code = 'broken'"""
            )
        finally:
            await admin.close()
        today = (await stub.GetClock(pb.GetClockRequest())).now.ToDatetime(tzinfo=UTC).date()
        good = (await stub.CreateSubscription(on_plan("good", "metered", today))).subscription
        bad = (await stub.CreateSubscription(on_plan("bad", "broken", today))).subscription
        first = await run_until_settled(stub, today, pb.RUN_KIND_MONTHLY)
        assert first.counts.charged == 2  # the first period: base price only

        for tenant, code in (("good", "metered"), ("bad", "broken")):

            async def granted(tenant: str = tenant, code: str = code) -> bool:
                reply = await quota.GetEntitlements(q.GetEntitlementsRequest(tenant_id=tenant))
                return bool(reply.plan_code == code)

            await eventually(granted, timeout=30)
            await quota.RecordUsage(
                q.RecordUsageRequest(
                    event=q.UsageEvent(
                        tenant_id=tenant, key="api.calls", delta=250, idempotency_key=f"u-{tenant}"
                    )
                )
            )
        renewal = (
            await stub.GetSubscription(pb.GetSubscriptionRequest(subscription_id=good.subscription_id))
        ).subscription.next_billing_date
        due = date(renewal.year, renewal.month, renewal.day)
        later = (
            await stub.CreateSubscription(custom("later", 4000, MONTHLY, due + timedelta(days=1)))
        ).subscription

        await stub.SetClock(
            pb.SetClockRequest(now=at(datetime.combine(due + timedelta(days=1), time(4), UTC)))
        )
        renewals = await completed_run(stub, due, pb.RUN_KIND_MONTHLY, timeout=90)
        assert (renewals.counts.charged, renewals.counts.parked) == (1, 1)
        [parked] = await deps.recurring_rows(
            "SELECT status, detail FROM work_items WHERE subscription_id = $1 AND due_date = $2",
            bad.subscription_id,
            due,
        )
        assert parked["status"] == "parked" and parked["detail"].startswith("usage:")
        assert (
            await deps.recurring_rows(
                "SELECT * FROM invoices WHERE subscription_id = $1 AND billing_date = $2",
                bad.subscription_id,
                due,
            )
            == []
        )
        good_invoices = (
            await stub.ListInvoices(pb.ListInvoicesRequest(subscription_id=good.subscription_id))
        ).invoices
        assert good_invoices[-1].total.amount_minor == 1000 + 250  # 250 calls at 0.01
        assert good_invoices[-1].status == pb.INVOICE_STATUS_PAID

        # The next date's run was created too, and billed its subscription.
        next_day = await completed_run(stub, due + timedelta(days=1), pb.RUN_KIND_MONTHLY)
        assert next_day.counts.charged == 1
        [later_invoice] = (
            await stub.ListInvoices(pb.ListInvoicesRequest(subscription_id=later.subscription_id))
        ).invoices
        assert later_invoice.status == pb.INVOICE_STATUS_PAID
