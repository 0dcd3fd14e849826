"""Protobuf <-> domain."""

from __future__ import annotations

from datetime import datetime

from billing.events.v1 import subscription_pb2 as sub_events
from billing.quota.v1 import quota_pb2 as pb
from billing_common.protos import (
    FREQUENCIES,
    SUBSCRIPTION_STATES,
    ProtoEnum,
    money_pb,
    optional_datetime,
    stamp,
)
from quota.app.usage import CheckResult
from quota.domain.catalog import (
    ActiveAddOn,
    AddOn,
    AddOnDraft,
    Behaviour,
    Entitlement,
    EntitlementDraft,
    Period,
    Plan,
    PlanDraft,
)
from quota.domain.periods import window_for
from quota.domain.resolution import Grant, Resolution, SubscriptionView

PERIODS = ProtoEnum(Period, pb.Period, "PERIOD_")
BEHAVIOURS = ProtoEnum(Behaviour, pb.OverQuotaBehaviour, "OVER_QUOTA_BEHAVIOUR_")


def entitlement_draft(e: pb.Entitlement) -> EntitlementDraft:
    return EntitlementDraft(
        key=e.key,
        limit=e.limit,
        unlimited=e.unlimited,
        period=PERIODS.get(e.period, None),
        behaviour=BEHAVIOURS.get(e.behaviour, None),
        included_quantity=e.included_quantity,
        unit_price=e.unit_price.value,
    )


def plan_draft(spec: pb.PlanSpec) -> PlanDraft:
    return PlanDraft(
        name=spec.name,
        price_minor=spec.price.amount_minor,
        currency=spec.price.currency,
        frequency=FREQUENCIES.get(spec.frequency, None),
        trial_days=spec.trial_days,
        entitlements=[entitlement_draft(e) for e in spec.entitlements],
        threshold_percents=list(spec.threshold_percents),
        is_free_fallback=spec.is_free_fallback,
    )


def add_on_draft(add_on: pb.AddOn) -> AddOnDraft:
    return AddOnDraft(
        code=add_on.code,
        name=add_on.name,
        price_minor=add_on.price.amount_minor,
        currency=add_on.price.currency,
        entitlements=[entitlement_draft(e) for e in add_on.entitlements],
    )


def entitlement_pb(e: Entitlement) -> pb.Entitlement:
    message = pb.Entitlement(
        key=e.key,
        limit=e.limit or 0,
        unlimited=e.unlimited,
        period=PERIODS.pb(e.period),
        behaviour=BEHAVIOURS.pb(e.behaviour),
        included_quantity=e.included_quantity,
    )
    if e.unit_price is not None:
        message.unit_price.value = str(e.unit_price)
    return message


def plan_pb(plan: Plan) -> pb.Plan:
    spec = plan.spec
    message = pb.Plan(
        code=plan.code,
        version=plan.version,
        name=spec.name,
        price=money_pb(spec.price),
        frequency=FREQUENCIES.pb(spec.frequency),
        trial_days=spec.trial_days,
        entitlements=[entitlement_pb(e) for e in spec.entitlements],
        threshold_percents=list(spec.threshold_percents),
        is_free_fallback=spec.is_free_fallback,
        retired=plan.retired,
    )
    message.created_at.FromDatetime(plan.created_at)
    return message


def add_on_pb(add_on: AddOn) -> pb.AddOn:
    return pb.AddOn(
        code=add_on.code,
        name=add_on.name,
        price=money_pb(add_on.price),
        entitlements=[entitlement_pb(e) for e in add_on.entitlements],
    )


def active_add_on_pb(held: ActiveAddOn) -> pb.ActiveAddOn:
    message = pb.ActiveAddOn(code=held.add_on.code, name=held.add_on.name, price=money_pb(held.add_on.price))
    message.active_from.FromDatetime(held.active_from)
    message.active_until.FromDatetime(held.active_until)
    return message


def grant_pb(grant: Grant) -> pb.Grant:
    message = pb.Grant(
        grant_id=grant.grant_id, tenant_id=grant.tenant_id, key=grant.key, quantity=grant.quantity
    )
    message.expires_at.FromDatetime(grant.expires_at)
    message.created_at.FromDatetime(grant.created_at)
    return message


def entitlements_pb(resolution: Resolution, now: datetime) -> pb.GetEntitlementsResponse:
    subscription = resolution.subscription
    message = pb.GetEntitlementsResponse(
        tenant_id=resolution.tenant_id,
        subscription_id=subscription.subscription_id if subscription else "",
        subscription_status=subscription.status_name if subscription else "",
        plan_code=resolution.plan.code if resolution.plan else "",
        plan_version=resolution.plan.version if resolution.plan else 0,
        denied=resolution.denied,
    )
    for key in sorted(resolution.entitlements):
        resolved = resolution.entitlements[key]
        item = message.entitlements.add(entitlement=entitlement_pb(resolved.entitlement))
        for source in resolved.sources:
            item.sources.add(
                kind=source.kind,
                reference=source.reference,
                limit=source.limit or 0,
                unlimited=source.limit is None,
            )
        window = window_for(resolved.entitlement.period, now, resolution.billing)
        if window is not None:
            item.period_start.FromDatetime(window.start)
            stamp(item.period_end, window.end)
    return message


def check_pb(check: CheckResult) -> pb.CheckQuotaResponse:
    message = pb.CheckQuotaResponse()
    fill_check(message, check)
    return message


def fill_check(message: pb.CheckQuotaResponse, check: CheckResult) -> None:
    """Set in place, so that a batch answer does not build and copy a message per event.

    `message` is new: fields that stay at their defaults (false, zero) are left alone.
    """
    decision = check.decision
    message.allowed = decision.allowed
    message.used = decision.used
    if decision.limit is None:
        message.unlimited = True
    else:
        message.limit = decision.limit
        message.remaining = decision.remaining or 0
    message.behaviour = BEHAVIOURS.pb(decision.behaviour)
    message.reason = decision.reason
    if decision.warning:
        message.warning = True
    message.key = check.key
    if check.window is not None:
        stamp(message.period_end, check.window.end)


def subscription_view(snapshot: sub_events.SubscriptionSnapshot) -> SubscriptionView:
    return SubscriptionView(
        subscription_id=snapshot.subscription_id,
        tenant_id=snapshot.account_id,
        status=SUBSCRIPTION_STATES.get(snapshot.status, None),
        plan_code=snapshot.plan_code,
        plan_version=snapshot.plan_version,
        period_start=optional_datetime(snapshot, "current_period_start"),
        period_end=optional_datetime(snapshot, "current_period_end"),
        previous_period_start=None,
        version=snapshot.version,
    )
