"""Flow 1 (DESIGN §2): a subscription to a plan in recurring makes quota grant the plan's entitlements."""

from datetime import UTC, datetime

import pytest

from billing.common.v1 import common_pb2 as common
from billing.quota.v1 import quota_pb2 as q
from billing.recurring.v1 import recurring_pb2 as r
from billing_devtools.testing.plugin import InfraEnv, eventually
from tests.integration.suite import running_suite

PRO = q.PlanSpec(
    name="Pro",
    price=common.Money(amount_minor=4900, currency="USD"),
    frequency=common.BILLING_FREQUENCY_MONTHLY,
    entitlements=[
        q.Entitlement(
            key="api.calls",
            limit=1000,
            period=q.PERIOD_BILLING,
            behaviour=q.OVER_QUOTA_BEHAVIOUR_DENY,
        )
    ],
)


@pytest.mark.timeout(180)
async def test_a_new_subscription_makes_quota_grant_the_plan(env: InfraEnv) -> None:
    async with running_suite(env, ["quota", "gateway-adapter", "recurring"]) as suite:
        quota, recurring = suite.stub("quota"), suite.stub("recurring")
        await quota.CreatePlan(q.CreatePlanRequest(code="pro", spec=PRO, idempotency_key="plan-pro"))
        before = await quota.CheckQuota(q.CheckQuotaRequest(tenant_id="acme", key="api.calls", amount=1))
        assert not before.allowed

        today = datetime.now(UTC).date()
        created = await recurring.CreateSubscription(
            r.CreateSubscriptionRequest(
                account_id="acme",
                merchant_id="merchant-1",
                plan_code="pro",
                start_date=common.Date(year=today.year, month=today.month, day=today.day),
                billing_anchor_day=today.day,
                payment_method=common.PaymentMethod(
                    type=common.PAYMENT_METHOD_TYPE_CARD, gateway_token="tok_success"
                ),
                idempotency_key="subscribe-acme",
            )
        )
        assert created.subscription.plan_code == "pro"
        assert created.subscription.amount.amount_minor == 4900  # snapshotted from the catalog

        async def granted() -> q.GetEntitlementsResponse | None:
            reply = await quota.GetEntitlements(q.GetEntitlementsRequest(tenant_id="acme"))
            return reply if reply.plan_code == "pro" and not reply.denied else None

        entitlements = await eventually(granted, timeout=30)
        by_key = {e.entitlement.key: e.entitlement for e in entitlements.entitlements}
        assert by_key["api.calls"].limit == 1000
        after = await quota.CheckQuota(q.CheckQuotaRequest(tenant_id="acme", key="api.calls", amount=1))
        assert after.allowed
        assert after.remaining == 1000
