"""Seed what the console's tests look at, through the services' own gRPC APIs as an operator:
an account that became Pro by a rule (with its evidence), its tier-mapped subscription moved to the
Pro plan, and a second subscription whose first charge soft-declined into a dunning case."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime

from billing.common.v1 import common_pb2 as common
from billing.dunning.v1 import dunning_pb2 as d
from billing.quota.v1 import quota_pb2 as q
from billing.recurring.v1 import recurring_pb2 as r
from billing.tier.v1 import tier_pb2 as t
from billing_devtools.testing.plugin import eventually
from tests.integration.suite import Suite

ACCOUNT = "acme"
BILLING_DAY = date(2031, 5, 5)


@dataclass(frozen=True)
class Seeded:
    account_id: str
    pro_subscription_id: str
    failing_subscription_id: str
    invoice_id: str
    case_id: str
    run_id: str


def _plan(name: str, price: int, seats: int) -> q.PlanSpec:
    return q.PlanSpec(
        name=name,
        price=common.Money(amount_minor=price, currency="USD"),
        frequency=common.BILLING_FREQUENCY_MONTHLY,
        entitlements=[
            q.Entitlement(
                key="seats", limit=seats, period=q.PERIOD_NONE, behaviour=q.OVER_QUOTA_BEHAVIOUR_DENY
            )
        ],
    )


def _day(value: date) -> common.Date:
    return common.Date(year=value.year, month=value.month, day=value.day)


def _sso(active: bool) -> t.Signal:
    signal = t.Signal(
        account_id=ACCOUNT, kind=t.SIGNAL_KIND_SSO_ACTIVE, value=str(active).lower(), source="workos"
    )
    signal.observed_at.GetCurrentTime()
    return signal


async def _scan(tier: object, key: str) -> None:
    started = await tier.RunScan(t.RunScanRequest(kind=t.SCAN_KIND_FULL, idempotency_key=key))  # type: ignore[attr-defined]

    async def finished() -> bool:
        reply = await tier.GetScan(t.GetScanRequest(scan_id=started.scan.scan_id))  # type: ignore[attr-defined]
        return bool(reply.scan.state == t.SCAN_STATE_COMPLETED)

    await eventually(finished, timeout=60)


async def seed(suite: Suite) -> Seeded:
    quota, recurring, tier, dunning = (suite.stub(n) for n in ("quota", "recurring", "tier", "dunning"))
    await quota.CreatePlan(
        q.CreatePlanRequest(code="lite", spec=_plan("Lite", 1000, 3), idempotency_key="lite")
    )
    await quota.CreatePlan(
        q.CreatePlanRequest(code="pro", spec=_plan("Pro", 4900, 50), idempotency_key="pro")
    )
    await quota.SetTierPlanMapping(
        q.SetTierPlanMappingRequest(
            mappings=[
                q.TierPlan(tier=common.TIER_LITE, plan_code="lite"),
                q.TierPlan(tier=common.TIER_PRO, plan_code="pro"),
            ]
        )
    )
    today = datetime.now(UTC).date()
    pro = await recurring.CreateSubscription(
        r.CreateSubscriptionRequest(
            account_id=ACCOUNT,
            merchant_id="merchant-1",
            plan_code="lite",
            start_date=_day(today),
            billing_anchor_day=min(today.day, 28),
            payment_method=common.PaymentMethod(
                type=common.PAYMENT_METHOD_TYPE_CARD, gateway_token="tok_success"
            ),
            idempotency_key="subscribe-acme",
            tier_mapped=True,
        )
    )
    await tier.UpsertEndUsers(
        t.UpsertEndUsersRequest(end_users=[t.EndUser(end_user_id=ACCOUNT, name="Acme Corp", active=True)])
    )
    await tier.UpsertDatabases(
        t.UpsertDatabasesRequest(
            databases=[
                t.Database(
                    database_id="acme-db",
                    end_user_id=ACCOUNT,
                    company_name="Acme Corp",
                    sso_access=True,
                    active=True,
                )
            ]
        )
    )
    await tier.ReportSignals(t.ReportSignalsRequest(signals=[_sso(False)]))
    await _scan(tier, "first")
    await tier.ReportSignals(t.ReportSignalsRequest(signals=[_sso(True)]))
    await _scan(tier, "after-sso")
    pro_id = pro.subscription.subscription_id

    async def moved_to_pro() -> bool:
        found = await recurring.GetSubscription(r.GetSubscriptionRequest(subscription_id=pro_id))
        return bool(found.subscription.plan_code == "pro")

    await eventually(moved_to_pro, timeout=60)

    failing = await recurring.CreateSubscription(
        r.CreateSubscriptionRequest(
            account_id=ACCOUNT,
            merchant_id="merchant-1",
            custom_amount=common.Money(amount_minor=2500, currency="USD"),
            frequency=common.BILLING_FREQUENCY_WEEKLY,
            start_date=_day(BILLING_DAY),
            payment_method=common.PaymentMethod(
                type=common.PAYMENT_METHOD_TYPE_CARD, gateway_token="tok_flaky_2"
            ),
            idempotency_key="subscribe-acme-weekly",
        )
    )
    run = (
        await recurring.RunBilling(r.RunBillingRequest(billing_date=_day(BILLING_DAY), kind=r.RUN_KIND_DAILY))
    ).run

    async def run_done() -> bool:
        found = (await recurring.GetRun(r.GetRunRequest(run_id=run.run_id))).run
        return found.state in (r.RUN_STATE_COMPLETED, r.RUN_STATE_HALTED)

    await eventually(run_done, timeout=90)
    invoices = await recurring.ListInvoices(
        r.ListInvoicesRequest(subscription_id=failing.subscription.subscription_id)
    )
    [invoice] = invoices.invoices

    async def case_scheduled() -> d.DunningCase | None:
        try:
            found = (await dunning.GetCase(d.GetCaseRequest(invoice_id=invoice.invoice_id))).dunning_case
        except Exception:
            return None
        return found if found.state == d.CASE_STATE_RETRY_SCHEDULED else None

    case: d.DunningCase = await eventually(case_scheduled, timeout=60)
    return Seeded(
        ACCOUNT, pro_id, failing.subscription.subscription_id, invoice.invoice_id, case.case_id, run.run_id
    )
