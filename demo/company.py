"""The demo company: a plan catalog, a hierarchy of end users and a distributor, and a few hundred
subscriptions.

The plan-based customers are end users that pay for themselves (standalone), so their own tier
picks their plan: when one becomes Pro its subscription moves to the Pro plan. The distributor
resells to end users of its own, billed through it: their tiers roll up to the distributor's.

Everything goes through the services' gRPC APIs as the operator, with idempotency keys (or
upserts), so seeding twice changes nothing. The payment tokens are the sandbox gateway's own:
`ach_settles` and `ach_returns_r01` clear days later, the decline tokens decline softly
(`tok_insufficient_funds`, `tok_do_not_honor`) or hard (`tok_stolen_card`, `tok_expired_card`), and
`tok_flaky_<n>` declines n times, then pays (each distinct spelling has its own count, so leading
zeros give every customer their own flaky card).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime

import grpc

from billing.common.v1 import common_pb2 as common
from billing.dunning.v1 import dunning_pb2 as dpb
from billing.quota.v1 import quota_pb2 as qpb
from billing.recurring.v1 import recurring_pb2 as rpb
from billing.tier.v1 import tier_pb2 as tpb
from demo.stubs import Stubs

CURRENCY = "USD"
# The longest quota may take to hear of a new subscription.
SUBSCRIPTION_HEARD_TIMEOUT_S = 60.0
MERCHANT = "demo-merchant"
DISTRIBUTOR = "demo-distributor"
# The end users the distributor resells to; they pay through it, so they have no subscription.
RESOLD_END_USERS = [f"{DISTRIBUTOR}-customer-{n}" for n in range(1, 4)]
# Metered (billed beyond what is included) and limited (refused beyond the limit) keys.
API_CALLS = "api.calls"
EXPORTS = "exports.daily"
TIER_PLANS = {common.TIER_LITE: "lite", common.TIER_PLUS: "plus", common.TIER_PRO: "pro"}
FREQUENCIES = [
    common.BILLING_FREQUENCY_MONTHLY,
    common.BILLING_FREQUENCY_WEEKLY,
    common.BILLING_FREQUENCY_BIWEEKLY,
    common.BILLING_FREQUENCY_FOUR_WEEKLY,
    common.BILLING_FREQUENCY_ONE_TIME,
]


def money(amount_minor: int) -> common.Money:
    return common.Money(amount_minor=amount_minor, currency=CURRENCY)


def plan_spec(name: str, price: int, included_calls: int, daily_exports: int) -> qpb.PlanSpec:
    return qpb.PlanSpec(
        name=name,
        price=money(price),
        frequency=common.BILLING_FREQUENCY_MONTHLY,
        entitlements=[
            qpb.Entitlement(
                key=API_CALLS,
                unlimited=True,
                period=qpb.PERIOD_BILLING,
                behaviour=qpb.OVER_QUOTA_BEHAVIOUR_ALLOW,
                included_quantity=included_calls,
                unit_price=common.Decimal(value="0.002"),
            ),
            qpb.Entitlement(
                key=EXPORTS,
                limit=daily_exports,
                period=qpb.PERIOD_CALENDAR_DAY,
                behaviour=qpb.OVER_QUOTA_BEHAVIOUR_DENY,
            ),
        ],
        threshold_percents=[80, 100],
    )


PLANS = {
    "lite": plan_spec("Lite", 2900, 20_000, 5),
    "plus": plan_spec("Plus", 7900, 100_000, 20),
    "pro": plan_spec("Pro", 19900, 500_000, 100),
}
ADD_ONS = [
    qpb.AddOn(
        code="extra-exports",
        name="Extra exports",
        price=money(1500),
        entitlements=[
            qpb.Entitlement(
                key=EXPORTS, limit=50, period=qpb.PERIOD_CALENDAR_DAY, behaviour=qpb.OVER_QUOTA_BEHAVIOUR_DENY
            )
        ],
    ),
]


@dataclass(frozen=True)
class Customer:
    account_id: str
    frequency: common.BillingFrequency.ValueType
    token: str
    method: common.PaymentMethodType.ValueType
    start: date
    # Plan-based customers are end users billed themselves, in the tier hierarchy; they follow their tier.
    tier_mapped: bool
    custom_amount: int


def payment_token(n: int) -> tuple[str, common.PaymentMethodType.ValueType]:
    """Mostly cards that pay; some ACH; some through Stripe (the local Stripe-format server); a few
    that decline softly, hard, or pay on retry."""
    card, ach, stripe = (
        common.PAYMENT_METHOD_TYPE_CARD,
        common.PAYMENT_METHOD_TYPE_ACH,
        common.PAYMENT_METHOD_TYPE_STRIPE,
    )
    if n % 10 == 3:
        return ("ach_returns_r01" if n % 30 == 3 else "ach_settles"), ach
    if n % 20 == 9:
        return ("pm_card_chargeDeclinedInsufficientFunds" if n % 100 == 49 else "pm_card_visa"), stripe
    if n % 25 == 7:
        return "tok_insufficient_funds", card
    if n % 25 == 11:
        return "tok_do_not_honor", card
    if n % 40 == 17:
        return ("tok_stolen_card" if n % 80 == 17 else "tok_expired_card"), card
    if n % 12 == 5:
        return f"tok_flaky_{'0' * (n // 12)}1", card
    return "tok_visa", card


def customers(count: int, first_day: date) -> Iterator[Customer]:
    for n in range(count):
        token, method = payment_token(n)
        tier_mapped = n % 2 == 0
        frequency = (
            common.BILLING_FREQUENCY_MONTHLY if tier_mapped else FREQUENCIES[(n // 2) % len(FREQUENCIES)]
        )
        yield Customer(
            account_id=f"demo-{n:04d}",
            frequency=frequency,
            token=token,
            method=method,
            start=first_day.replace(day=1 + n % 28),
            tier_mapped=tier_mapped,
            custom_amount=0 if tier_mapped else 1500 + (n * 37) % 8000,
        )


async def seed(stubs: Stubs, count: int, first_day: date, now: datetime) -> list[Customer]:
    """The catalog, the hierarchy with its first signals and first scan, and the subscriptions;
    nothing when the last customer is subscribed already (its signals may have moved on since)."""
    everyone = list(customers(count, first_day))
    last = rpb.ListSubscriptionsRequest(account_id=everyone[-1].account_id)
    if (await stubs.recurring.ListSubscriptions(last)).subscriptions:
        return everyone
    for code, spec in PLANS.items():
        await stubs.quota.CreatePlan(
            qpb.CreatePlanRequest(code=code, spec=spec, idempotency_key=f"demo-{code}")
        )
    for add_on in ADD_ONS:
        await stubs.quota.CreateAddOn(
            qpb.CreateAddOnRequest(add_on=add_on, idempotency_key=f"demo-{add_on.code}")
        )
    await stubs.quota.SetTierPlanMapping(
        qpb.SetTierPlanMappingRequest(
            mappings=[qpb.TierPlan(tier=tier, plan_code=code) for tier, code in TIER_PLANS.items()]
        )
    )
    policy = dpb.RetryPolicy(
        merchant_id=MERCHANT,
        max_attempts=3,
        fixed=dpb.FixedSchedule(day_offsets=[2, 5, 9]),
        exhausted_action=dpb.EXHAUSTED_ACTION_SUSPEND,
    )
    policy.max_window.FromSeconds(14 * 86_400)
    await stubs.dunning.SetPolicy(dpb.SetPolicyRequest(policy=policy))

    mapped = [c for c in everyone if c.tier_mapped]
    await stubs.tier.UpsertDistributors(
        tpb.UpsertDistributorsRequest(
            distributors=[tpb.Distributor(distributor_id=DISTRIBUTOR, name="Demo Distribution", active=True)]
        )
    )
    owners = [(c.account_id, "") for c in mapped] + [(e, DISTRIBUTOR) for e in RESOLD_END_USERS]
    await stubs.tier.UpsertEndUsers(
        tpb.UpsertEndUsersRequest(
            end_users=[
                tpb.EndUser(end_user_id=end_user, distributor_id=distributor, name=end_user, active=True)
                for end_user, distributor in owners
            ]
        )
    )
    await stubs.tier.UpsertDatabases(
        tpb.UpsertDatabasesRequest(
            databases=[
                tpb.Database(
                    database_id=f"{end_user}-db",
                    end_user_id=end_user,
                    company_name=end_user,
                    sso_access=True,
                    rest_api_access=True,
                    active=True,
                )
                for end_user, _ in owners
            ]
        )
    )
    await stubs.tier.ReportSignals(
        tpb.ReportSignalsRequest(
            signals=[s for end_user, _ in owners for s in signals(end_user, now, sso=False, api_clients=0)]
        )
    )
    await stubs.scan("demo-first-scan")

    for c in everyone:
        request = rpb.CreateSubscriptionRequest(
            account_id=c.account_id,
            merchant_id=MERCHANT,
            start_date=common.Date(year=c.start.year, month=c.start.month, day=c.start.day),
            payment_method=common.PaymentMethod(type=c.method, gateway_token=c.token),
            idempotency_key=f"demo-subscribe-{c.account_id}",
            tier_mapped=c.tier_mapped,
        )
        if c.tier_mapped:
            request.plan_code = "lite"
            request.billing_anchor_day = c.start.day
        else:
            request.custom_amount.CopyFrom(money(c.custom_amount))
            request.frequency = c.frequency
        await stubs.recurring.CreateSubscription(request)
    for c in mapped[::7]:
        await attach_when_subscribed(stubs, c.account_id, "extra-exports")
    return everyone


async def attach_when_subscribed(stubs: Stubs, tenant_id: str, add_on_code: str) -> None:
    """Attach an add-on once quota has heard of the tenant's subscription (an event, so a moment
    after recurring answered); until then quota rightly refuses with FAILED_PRECONDITION."""
    request = qpb.SetTenantAddOnRequest(tenant_id=tenant_id, add_on_code=add_on_code, attached=True)
    async with asyncio.timeout(SUBSCRIPTION_HEARD_TIMEOUT_S):
        while True:
            try:
                await stubs.quota.SetTenantAddOn(request)
                return
            except grpc.aio.AioRpcError as refused:
                if refused.code() != grpc.StatusCode.FAILED_PRECONDITION:
                    raise
            await asyncio.sleep(0.1)


def signals(account_id: str, now: datetime, *, sso: bool, api_clients: int) -> list[tpb.Signal]:
    found = [
        tpb.Signal(
            account_id=account_id, kind=tpb.SIGNAL_KIND_SSO_ACTIVE, value=str(sso).lower(), source="demo"
        ),
        tpb.Signal(
            account_id=account_id,
            kind=tpb.SIGNAL_KIND_API_CLIENTS_ACTIVE,
            value=str(api_clients),
            source="demo",
        ),
    ]
    for signal in found:
        signal.observed_at.FromDatetime(now)
    return found
