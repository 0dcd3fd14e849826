"""Add-ons on the invoices: quota keeps when a tenant's add-ons were added and removed, and
recurring's run bills each one for the days of the period it was held, at its catalog price.

quota and recurring run on one test clock; the period billed on 4 June is 4 May - 4 June (31 days).
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta

import pytest
from google.protobuf.duration_pb2 import Duration

from billing.common.v1 import common_pb2 as common
from billing.quota.v1 import quota_pb2 as q
from billing.quota.v1 import quota_pb2_grpc
from billing.recurring.v1 import recurring_pb2 as pb
from billing_common.grpc_client import open_channel
from billing_devtools.testing.plugin import InfraEnv, eventually

from .conftest import dependencies, recurring_service, run_until_settled
from .test_poisoned_items import completed_run, on_plan
from .test_test_clock import at

START = datetime(2031, 5, 4, 12, tzinfo=UTC)
FIRST_DUE = date(2031, 5, 4)
RENEWAL = date(2031, 6, 4)
PLAN = q.CreatePlanRequest(
    code="team",
    idempotency_key="plan-team",
    spec=q.PlanSpec(
        name="Team",
        price=common.Money(amount_minor=1000, currency="USD"),
        frequency=common.BILLING_FREQUENCY_MONTHLY,
        entitlements=[
            q.Entitlement(key="seats", limit=5, period=q.PERIOD_NONE, behaviour=q.OVER_QUOTA_BEHAVIOUR_DENY)
        ],
    ),
)


def add_on(code: str, name: str, price_minor: int) -> q.CreateAddOnRequest:
    return q.CreateAddOnRequest(
        add_on=q.AddOn(
            code=code,
            name=name,
            price=common.Money(amount_minor=price_minor, currency="USD"),
            entitlements=[
                q.Entitlement(
                    key=f"{code}.users", limit=10, period=q.PERIOD_NONE, behaviour=q.OVER_QUOTA_BEHAVIOUR_DENY
                )
            ],
        ),
        idempotency_key=f"add-on-{code}",
    )


@pytest.mark.timeout(240)
async def test_add_ons_held_all_period_or_part_of_it_are_invoiced_by_the_days_held(env: InfraEnv) -> None:
    async with dependencies(env, quota_on_test_clock=True) as deps:
        settings = deps.recurring_settings(test_clock=True, max_catch_up_days=3)
        async with (
            open_channel(deps.quota.address, env.token("operator")) as channel,
            recurring_service(settings) as recurring,
        ):
            quota = quota_pb2_grpc.QuotaServiceStub(channel)
            stub = recurring.operator

            async def move_to(instant: datetime) -> None:
                """Move the suite's clock; returns once quota and recurring both run at `instant`."""
                now = (await stub.GetClock(pb.GetClockRequest())).now.ToDatetime(tzinfo=UTC)
                by = Duration()
                by.FromTimedelta(instant - now)
                moved = await stub.AdvanceClock(pb.AdvanceClockRequest(by=by), timeout=60)
                assert moved.caught_up

            async def hold(tenant: str, code: str, attached: bool = True) -> None:
                await quota.SetTenantAddOn(
                    q.SetTenantAddOnRequest(tenant_id=tenant, add_on_code=code, attached=attached)
                )

            await stub.SetClock(pb.SetClockRequest(now=at(START - timedelta(minutes=1))))
            await move_to(START)
            await quota.CreatePlan(PLAN)
            await quota.CreateAddOn(add_on("sso", "SSO", 3100))
            await quota.CreateAddOn(add_on("audit", "Audit log", 6200))
            subscriptions = {
                tenant: (await stub.CreateSubscription(on_plan(tenant, "team", FIRST_DUE))).subscription
                for tenant in ("whole", "part")
            }
            first = await run_until_settled(stub, FIRST_DUE, pb.RUN_KIND_MONTHLY)
            assert first.counts.charged == 2  # the first period: the plan's price only
            for tenant in subscriptions:

                async def subscribed(tenant: str = tenant) -> bool:
                    reply = await quota.GetEntitlements(q.GetEntitlementsRequest(tenant_id=tenant))
                    return bool(reply.plan_code == "team" and not reply.denied)

                await eventually(subscribed, timeout=30)
                await hold(tenant, "sso")  # on 4 May, the period's first day
            await move_to(datetime.combine(date(2031, 5, 10), time(9), UTC))
            await hold("part", "sso", attached=False)  # held 4-9 May: 6 days
            await move_to(datetime.combine(date(2031, 5, 20), time(15), UTC))
            await hold("part", "audit")  # held from 20 May: 15 days

            await stub.SetClock(
                pb.SetClockRequest(now=at(datetime.combine(RENEWAL + timedelta(days=1), time(4), UTC)))
            )
            renewals = await completed_run(stub, RENEWAL, pb.RUN_KIND_MONTHLY, timeout=90)

            assert (renewals.counts.charged, renewals.counts.failed) == (2, 0)
            billed = {}
            for tenant, sub in subscriptions.items():
                invoices = (
                    await stub.ListInvoices(pb.ListInvoicesRequest(subscription_id=sub.subscription_id))
                ).invoices
                renewal = next(
                    i for i in invoices if i.billing_date == common.Date(year=2031, month=6, day=4)
                )
                assert renewal.status == pb.INVOICE_STATUS_PAID
                billed[tenant] = (
                    [(line.kind, line.description, line.amount.amount_minor) for line in renewal.lines],
                    renewal.total.amount_minor,
                )
            assert billed["whole"] == (
                [
                    (pb.INVOICE_LINE_KIND_BASE, "team (monthly)", 1000),
                    (pb.INVOICE_LINE_KIND_ADD_ON, "Add-on: SSO", 3100),  # all 31 days: its price
                ],
                4100,
            )
            assert billed["part"] == (
                [
                    (pb.INVOICE_LINE_KIND_BASE, "team (monthly)", 1000),
                    (pb.INVOICE_LINE_KIND_ADD_ON, "Add-on: SSO (6 of 31 days)", 600),
                    (pb.INVOICE_LINE_KIND_ADD_ON, "Add-on: Audit log (15 of 31 days)", 3000),
                ],
                4600,
            )
            charged = sorted(c["amount_minor"] for c in await deps.sandbox_charges())
            assert charged == [1000, 1000, 4100, 4600]
            [revenue] = await deps.recurring_rows(
                "SELECT sum(amount_minor) AS total FROM ledger_entries WHERE account = 'revenue'"
            )
            assert revenue["total"] == -(1000 + 1000 + 4100 + 4600)
            await deps.assert_ledger_balances()
