"""Billing runs against the sandbox gateway: every occurrence charged exactly once."""

from __future__ import annotations

import asyncio
from datetime import UTC, date, datetime, timedelta

import asyncpg
import pytest
from google.protobuf.field_mask_pb2 import FieldMask
from google.protobuf.timestamp_pb2 import Timestamp
from prometheus_client import REGISTRY

from billing.common.v1 import common_pb2 as common
from billing.recurring.v1 import recurring_pb2 as pb
from billing.recurring.v1 import recurring_pb2_grpc
from billing_common.grpc_client import open_channel
from billing_devtools.testing.plugin import EventCollector, InfraEnv, eventually
from billing_devtools.testing.processes import start_process
from recurring.adapters.metrics import RunMetrics

from .conftest import ACH, Deps, custom, dependencies, pb_date, recurring_service, run_until_settled

DAY = date(2031, 5, 5)
WEEKLY = common.BILLING_FREQUENCY_WEEKLY


async def test_a_due_subscription_is_invoiced_charged_and_renewed(deps: Deps) -> None:
    async with recurring_service(deps.recurring_settings()) as recurring:
        created = (
            await recurring.operator.CreateSubscription(custom("acme", 2500, WEEKLY, DAY))
        ).subscription
        assert created.status == pb.SUBSCRIPTION_STATUS_ACTIVE
        assert created.next_billing_date == pb_date(DAY)

        run = await run_until_settled(recurring.operator, DAY)

        assert run.state == pb.RUN_STATE_COMPLETED
        assert (run.counts.due, run.counts.charged, run.counts.failed) == (1, 1, 0)
        assert run.progress_per_mille == 1000
        sub = (
            await recurring.operator.GetSubscription(
                pb.GetSubscriptionRequest(subscription_id=created.subscription_id)
            )
        ).subscription
        assert sub.next_billing_date == pb_date(date(2031, 5, 12))
        assert sub.current_period_start == pb_date(DAY)
        invoices = (
            await recurring.operator.ListInvoices(pb.ListInvoicesRequest(subscription_id=sub.subscription_id))
        ).invoices
        assert len(invoices) == 1
        invoice = invoices[0]
        assert invoice.status == pb.INVOICE_STATUS_PAID
        assert invoice.amount_due.amount_minor == 2500
        assert [t.idempotency_key for t in invoice.transactions] == [f"{invoice.invoice_id}:1"]
        balance = await recurring.operator.GetAccountBalance(
            pb.GetAccountBalanceRequest(account_id="acme", currency="USD")
        )
        assert balance.balance.amount_minor == 0
        charges = await deps.sandbox_charges()
        assert [(c["amount_minor"], c["idempotency_key"]) for c in charges] == [
            (2500, f"{invoice.invoice_id}:1")
        ]


async def test_a_run_on_a_standing_test_clock_takes_no_clock_time_but_reports_its_working_time(
    deps: Deps,
) -> None:
    async with recurring_service(deps.recurring_settings(test_clock=True)) as recurring:
        stub = recurring.operator
        now = Timestamp()
        now.FromDatetime(datetime(2031, 5, 5, 12, tzinfo=UTC))
        await stub.SetClock(pb.SetClockRequest(now=now))
        await stub.CreateSubscription(custom("acme", 2500, WEEKLY, DAY))

        run = await run_until_settled(stub, DAY)

        assert run.state == pb.RUN_STATE_COMPLETED
        assert run.duration.ToTimedelta() == timedelta(0)
        assert run.HasField("working_time")
        assert timedelta(0) < run.working_time.ToTimedelta() < timedelta(seconds=60)


async def test_an_idle_worker_starts_items_as_they_are_queued_not_at_its_next_poll(deps: Deps) -> None:
    """A run's items wake the pod's worker: on the suite's test clock each simulated day queues
    work, and a worker that slept its idle poll first made every day wait for it."""
    async with recurring_service(
        deps.recurring_settings(worker_idle_poll=timedelta(minutes=10))
    ) as recurring:
        await recurring.operator.CreateSubscription(custom("acme", 2500, WEEKLY, DAY))
        await asyncio.sleep(1)  # the worker found nothing to claim, and idles

        run = await run_until_settled(recurring.operator, DAY, timeout=10)

        assert (run.counts.due, run.counts.charged) == (1, 1)


async def test_the_same_date_twice_and_two_racing_runners_charge_each_occurrence_once(deps: Deps) -> None:
    settings = deps.recurring_settings(worker_batch_size=5)
    async with recurring_service(settings) as first, recurring_service(settings) as second:
        for n in range(30):
            await first.operator.CreateSubscription(custom(f"acct-{n}", 1000 + n, WEEKLY, DAY))
        request = pb.RunBillingRequest(billing_date=pb_date(DAY), kind=pb.RUN_KIND_DAILY)
        a, b = await asyncio.gather(first.operator.RunBilling(request), second.operator.RunBilling(request))
        assert a.run.run_id == b.run.run_id  # one run per date and kind

        run = await run_until_settled(first.operator, DAY)
        again = await run_until_settled(second.operator, DAY)

        assert again.run_id == run.run_id
        assert (again.counts.due, again.counts.charged) == (30, 30)
        charges = await deps.sandbox_charges()
        assert sorted(c["amount_minor"] for c in charges) == [1000 + n for n in range(30)]
        paid = await deps.recurring_rows("SELECT count(*) AS n FROM invoices WHERE status = 'paid'")
        assert paid[0]["n"] == 30
        runs = (await first.operator.ListRuns(pb.ListRunsRequest(page_size=100))).runs
        assert [r.run_id for r in runs if r.billing_date == pb_date(DAY)] == [run.run_id]


async def test_an_amount_under_the_minimum_is_invoiced_carried_and_charged_with_the_next_invoice(
    deps: Deps,
) -> None:
    async with recurring_service(deps.recurring_settings()) as recurring:
        stub = recurring.operator
        small = (await stub.CreateSubscription(custom("small", 499, WEEKLY, DAY))).subscription
        await stub.CreateSubscription(custom("enough", 500, WEEKLY, DAY))

        run = await run_until_settled(stub, DAY)

        assert (run.counts.due, run.counts.charged, run.counts.skipped) == (2, 1, 1)
        assert [c["amount_minor"] for c in await deps.sandbox_charges()] == [500]
        sub = (
            await stub.GetSubscription(pb.GetSubscriptionRequest(subscription_id=small.subscription_id))
        ).subscription
        assert sub.next_billing_date == pb_date(date(2031, 5, 12))  # the period is billed
        skipped = await deps.recurring_rows("SELECT detail FROM work_items WHERE status = 'skipped'")
        assert [r["detail"] for r in skipped] == ["below the minimum amount: carried to the next invoice"]
        balance = await stub.GetAccountBalance(
            pb.GetAccountBalanceRequest(account_id="small", currency="USD")
        )
        assert balance.balance.amount_minor == 499  # owed, not charged yet

        await run_until_settled(stub, date(2031, 5, 12))

        assert sorted(c["amount_minor"] for c in await deps.sandbox_charges()) == [500, 500, 998]
        invoices = (
            await stub.ListInvoices(pb.ListInvoicesRequest(subscription_id=small.subscription_id))
        ).invoices
        first, second = sorted(invoices, key=lambda i: (i.billing_date.month, i.billing_date.day))
        assert (first.status, first.total.amount_minor) == (pb.INVOICE_STATUS_PAID, 499)
        assert (second.status, second.total.amount_minor, second.amount_due.amount_minor) == (
            pb.INVOICE_STATUS_PAID,
            499,
            998,
        )
        assert [(line.kind, line.amount.amount_minor) for line in second.lines][-1] == (
            pb.INVOICE_LINE_KIND_CARRIED_BALANCE,
            499,
        )
        balance = await stub.GetAccountBalance(
            pb.GetAccountBalanceRequest(account_id="small", currency="USD")
        )
        assert balance.balance.amount_minor == 0


async def test_paused_and_cancelled_subscriptions_are_skipped(deps: Deps) -> None:
    async with recurring_service(deps.recurring_settings()) as recurring:
        paused = (
            await recurring.operator.CreateSubscription(custom("paused", 900, WEEKLY, DAY))
        ).subscription
        cancelled = (
            await recurring.operator.CreateSubscription(custom("gone", 900, WEEKLY, DAY))
        ).subscription
        await recurring.operator.PauseSubscription(
            pb.PauseSubscriptionRequest(subscription_id=paused.subscription_id)
        )
        await recurring.operator.CancelSubscription(
            pb.CancelSubscriptionRequest(subscription_id=cancelled.subscription_id)
        )

        run = await run_until_settled(recurring.operator, DAY)

        assert (run.counts.due, run.counts.skipped, run.counts.charged) == (1, 1, 0)
        assert await deps.sandbox_charges() == []


async def test_a_one_time_subscription_completes_after_payment(env: InfraEnv, deps: Deps) -> None:
    async with (
        recurring_service(deps.recurring_settings()) as recurring,
        EventCollector(env.infra.amqp_url, env.exchange, ["subscription.*", "invoice.*", "run.*"]) as events,
    ):
        once = (
            await recurring.operator.CreateSubscription(
                custom("once", 12000, common.BILLING_FREQUENCY_ONE_TIME, DAY)
            )
        ).subscription

        await run_until_settled(recurring.operator, DAY)

        sub = (
            await recurring.operator.GetSubscription(
                pb.GetSubscriptionRequest(subscription_id=once.subscription_id)
            )
        ).subscription
        assert sub.status == pb.SUBSCRIPTION_STATUS_COMPLETED
        assert not sub.HasField("next_billing_date")
        await events.wait_for(
            "subscription.completed", lambda e: e.subscription.subscription_id == once.subscription_id
        )
        paid = await events.wait_for("invoice.paid")
        assert paid[0].invoice.amount_due.amount_minor == 12000
        await events.wait_for("run.completed", lambda e: e.counts.charged == 1)
        next_week = await run_until_settled(recurring.operator, date(2031, 5, 12))
        assert next_week.counts.due == 0
        assert len(await deps.sandbox_charges()) == 1


async def test_a_gateway_outage_halts_only_that_gateways_part(env: InfraEnv, deps: Deps) -> None:
    async with (
        recurring_service(deps.recurring_settings()) as recurring,
        EventCollector(env.infra.amqp_url, env.exchange, ["run.*"]) as events,
    ):
        down = [
            (
                await recurring.operator.CreateSubscription(
                    custom(f"card-{n}", 1000, WEEKLY, DAY, token="tok_gateway_unreachable", merchant=f"m-{n}")
                )
            ).subscription
            for n in range(6)
        ]
        for n in range(3):
            await recurring.operator.CreateSubscription(
                custom(f"bank-{n}", 2000, WEEKLY, DAY, method=ACH, token="ach_settles")
            )

        run = await run_until_settled(recurring.operator, DAY)

        assert run.state == pb.RUN_STATE_HALTED
        assert list(run.halted_gateways) == ["sandbox-card"]
        assert run.counts.charged == 3  # the ACH part went on
        assert run.counts.failed == 0  # an unreachable gateway is not the customer's failure
        assert run.counts.deferred == 6
        halted = await events.wait_for("run.halted")
        assert halted[0].gateway == "sandbox-card" and halted[0].deferred_items == 6
        # What the alert and the dashboard see: a halted gateway, its items waiting, no backlog.
        assert recurring.host.resources is not None
        await RunMetrics(recurring.host.resources.pool).refresh()
        labels = {"kind": "daily", "billing_date": DAY.isoformat()}
        assert REGISTRY.get_sample_value("recurring_run_halted_gateways", labels) == 1
        assert REGISTRY.get_sample_value("recurring_run_items", {**labels, "status": "deferred"}) == 6
        assert REGISTRY.get_sample_value("recurring_work_backlog_items") == 0

        for sub in down:
            await recurring.operator.UpdateSubscription(
                pb.UpdateSubscriptionRequest(
                    subscription_id=sub.subscription_id,
                    subscription=pb.Subscription(
                        payment_method=common.PaymentMethod(
                            type=common.PAYMENT_METHOD_TYPE_CARD, gateway_token="tok_success"
                        )
                    ),
                    update_mask=FieldMask(paths=["payment_method"]),
                )
            )
        await recurring.operator.ResumeRun(pb.ResumeRunRequest(run_id=run.run_id, gateway="sandbox-card"))

        async def completed() -> pb.Run | None:
            found = (await recurring.operator.GetRun(pb.GetRunRequest(run_id=run.run_id))).run
            return found if found.state == pb.RUN_STATE_COMPLETED else None

        done = await eventually(completed, timeout=30)
        assert (done.counts.charged, done.counts.deferred) == (9, 0)
        succeeded = await deps.sandbox_charges("token = 'tok_success'")
        assert len(succeeded) == 6
        await events.wait_for("run.completed")


@pytest.mark.timeout(180)
async def test_a_worker_killed_mid_batch_loses_nothing_and_doubles_nothing(env: InfraEnv) -> None:
    async with dependencies(
        env,
        GATEWAY_SANDBOX_LATENCY="0.2s",
        GATEWAY_PROCESSING_TIMEOUT="1s",
        GATEWAY_IN_FLIGHT_WAIT="1s",
        GATEWAY_JANITOR_INTERVAL="0.3s",
        # A batch of 20 takes about two seconds at the gateway: the kill comes with it in hand.
        GATEWAY_RATE_LIMITS="sandbox-card=10",
    ) as deps:
        settings = deps.recurring_settings(worker_lease=timedelta(seconds=2), worker_batch_size=20)
        doomed = await start_process("recurring", "RECURRING", settings)
        try:
            async with open_channel(doomed.address, env.token("operator")) as channel:
                stub = recurring_pb2_grpc.RecurringServiceStub(channel)
                for n in range(40):
                    await stub.CreateSubscription(custom(f"k-{n}", 3000 + n, WEEKLY, DAY))
                await stub.RunBilling(pb.RunBillingRequest(billing_date=pb_date(DAY), kind=pb.RUN_KIND_DAILY))

                async def some_charged() -> bool:
                    return len(await deps.sandbox_charges()) >= 5

                await eventually(some_charged, timeout=30, interval=0.01)
        finally:
            await doomed.kill()
        claimed = await deps.recurring_rows("SELECT count(*) AS n FROM work_items WHERE status = 'claimed'")
        assert claimed[0]["n"] > 0  # it died holding a batch

        async with recurring_service(settings) as survivor:
            run = await run_until_settled(survivor.operator, DAY)
            assert run.counts.due == 40
            assert (run.counts.charged, run.counts.failed, run.counts.parked) == (40, 0, 0)

            # A charge cut off with the dead pod is sent again with its key, by the run: the
            # customer's card is charged once, and nobody goes to dunning for our crash.
            async def settled() -> list[asyncpg.Record]:
                rows = await deps.recurring_rows("SELECT invoice_id, status FROM invoices")
                return rows if all(r["status"] == "paid" for r in rows) else []

            invoices = await eventually(settled, timeout=30)
            assert len(invoices) == 40  # one per occurrence

        charges = await deps.sandbox_charges("outcome = 'approved'")
        assert sorted(c["amount_minor"] for c in charges) == [3000 + n for n in range(40)]
        paid = await deps.recurring_rows("SELECT count(*) AS n FROM invoices WHERE status = 'paid'")
        assert paid[0]["n"] == 40
        payments = await deps.recurring_rows(
            "SELECT count(*) AS n FROM ledger_entries WHERE kind = 'payment'"
        )
        assert payments[0]["n"] == 80  # one balanced pair per invoice, none twice
