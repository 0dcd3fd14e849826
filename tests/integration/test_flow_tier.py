"""Flow 4 (DESIGN §2): SSO turned on → tier scan → tier.changed → recurring moves the tier-mapped
subscription to the mapped plan with proration → subscription.plan_changed → quota re-projects."""

from datetime import UTC, datetime

import pytest

from billing.common.v1 import common_pb2 as common
from billing.quota.v1 import quota_pb2 as q
from billing.recurring.v1 import recurring_pb2 as r
from billing.tier.v1 import tier_pb2 as t
from billing_devtools.testing.plugin import EventCollector, InfraEnv, eventually
from tests.integration.suite import running_suite


def plan(name: str, price: int, seats: int) -> q.PlanSpec:
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


def sso(account: str, active: bool) -> t.Signal:
    signal = t.Signal(
        account_id=account, kind=t.SIGNAL_KIND_SSO_ACTIVE, value=str(active).lower(), source="test"
    )
    signal.observed_at.GetCurrentTime()
    return signal


async def scan(tier: object, key: str) -> t.Scan:
    started = await tier.RunScan(t.RunScanRequest(kind=t.SCAN_KIND_FULL, idempotency_key=key))  # type: ignore[attr-defined]

    async def finished() -> t.Scan | None:
        reply = await tier.GetScan(t.GetScanRequest(scan_id=started.scan.scan_id))  # type: ignore[attr-defined]
        return reply.scan if reply.scan.state == t.SCAN_STATE_COMPLETED else None

    done: t.Scan = await eventually(finished, timeout=30)
    return done


@pytest.mark.timeout(240)
async def test_sso_makes_a_tier_mapped_subscription_pro(env: InfraEnv) -> None:
    async with (
        running_suite(env, ["quota", "gateway-adapter", "recurring", "tier"]) as suite,
        EventCollector(
            env.infra.amqp_url, env.exchange, ["tier.changed", "subscription.plan_changed"]
        ) as events,
    ):
        quota, recurring, tier = suite.stub("quota"), suite.stub("recurring"), suite.stub("tier")
        await quota.CreatePlan(
            q.CreatePlanRequest(code="lite", spec=plan("Lite", 1000, 3), idempotency_key="lite")
        )
        await quota.CreatePlan(
            q.CreatePlanRequest(code="pro", spec=plan("Pro", 4900, 50), idempotency_key="pro")
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
        created = await recurring.CreateSubscription(
            r.CreateSubscriptionRequest(
                account_id="acme",
                merchant_id="merchant-1",
                plan_code="lite",
                start_date=common.Date(year=today.year, month=today.month, day=today.day),
                billing_anchor_day=min(today.day, 28),
                payment_method=common.PaymentMethod(
                    type=common.PAYMENT_METHOD_TYPE_CARD, gateway_token="tok_success"
                ),
                idempotency_key="subscribe-acme",
                tier_mapped=True,
            )
        )
        subscription_id = created.subscription.subscription_id

        await tier.UpsertEndUsers(
            t.UpsertEndUsersRequest(end_users=[t.EndUser(end_user_id="acme", name="Acme", active=True)])
        )
        await tier.UpsertDatabases(
            t.UpsertDatabasesRequest(
                databases=[
                    t.Database(
                        database_id="acme-db",
                        end_user_id="acme",
                        company_name="Acme",
                        sso_access=True,
                        active=True,
                    )
                ]
            )
        )
        await tier.ReportSignals(t.ReportSignalsRequest(signals=[sso("acme", False)]))
        await scan(tier, "first")
        assert events.of_type("tier.changed") == []  # first tiers are recorded, not announced

        await tier.ReportSignals(t.ReportSignalsRequest(signals=[sso("acme", True)]))
        changed = await scan(tier, "after-sso")
        assert changed.changes == 2  # the database and, by roll-up, its end user

        [billed] = await events.wait_for("tier.changed", lambda e: e.account_id == "acme", timeout=20)
        assert billed.new_tier == common.TIER_PRO and billed.previous_tier == common.TIER_LITE
        [moved] = await events.wait_for("subscription.plan_changed", timeout=30)
        assert moved.subscription.subscription_id == subscription_id

        after = await recurring.GetSubscription(r.GetSubscriptionRequest(subscription_id=subscription_id))
        assert after.subscription.plan_code == "pro"
        assert after.subscription.amount.amount_minor == 4900

        async def pro_seats() -> bool:
            reply = await quota.GetEntitlements(q.GetEntitlementsRequest(tenant_id="acme"))
            limits = {e.entitlement.key: e.entitlement.limit for e in reply.entitlements}
            return reply.plan_code == "pro" and limits.get("seats") == 50

        await eventually(pro_seats, timeout=30)
        history = await recurring.GetSubscriptionHistory(
            r.GetSubscriptionHistoryRequest(subscription_id=subscription_id)
        )
        assert any("tier.changed" in str(entry) for entry in history.entries)
