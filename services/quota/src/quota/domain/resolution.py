"""Entitlement resolution: subscription -> plan version -> + add-ons, overrides, grants.

Order: the plan's entitlements; add-ons add their limits and included quantities for the same key
(or bring new keys); a tenant override then replaces the limit and/or behaviour of a key; unexpired
grants add their quantity on top. Tenants without an entitled subscription get the catalog's free
fallback plan (without add-ons), or are denied everything. Overrides and grants only change keys
the tenant is entitled to.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime

from billing_common.subscriptions import SubscriptionStatus
from quota.domain.catalog import AddOn, Behaviour, Entitlement, Plan
from quota.domain.periods import BillingPeriod

# Past-due tenants keep their entitlements while dunning recovers the payment.
ENTITLED_STATUSES = frozenset(
    {SubscriptionStatus.TRIALING, SubscriptionStatus.ACTIVE, SubscriptionStatus.PAST_DUE}
)

# How a state the contract names after this version of it is stored and answered (never entitled).
UNNAMED_STATUS = "unknown"


def status_named(text: str) -> SubscriptionStatus | None:
    """A stored or answered status back: None for `UNNAMED_STATUS`."""
    return None if text == UNNAMED_STATUS else SubscriptionStatus(text)


@dataclass(frozen=True)
class SubscriptionView:
    """quota's projection of one subscription, from recurring's snapshots."""

    subscription_id: str
    tenant_id: str
    status: SubscriptionStatus | None  # None: a state this version of the contract does not name
    plan_code: str
    plan_version: int
    period_start: datetime | None
    period_end: datetime | None
    previous_period_start: datetime | None
    version: int

    @property
    def status_name(self) -> str:
        return UNNAMED_STATUS if self.status is None else self.status.value

    @property
    def entitled(self) -> bool:
        return self.status in ENTITLED_STATUSES

    @property
    def billing_period(self) -> BillingPeriod | None:
        if self.period_start is None or self.period_end is None:
            return None
        return BillingPeriod(self.period_start, self.period_end, self.previous_period_start)

    def advanced_by(self, newer: SubscriptionView) -> SubscriptionView | None:
        """The projection after a newer snapshot; None when `newer` is not newer (ignored)."""
        if newer.version <= self.version:
            return None
        previous = self.previous_period_start
        if newer.period_start != self.period_start and self.period_start is not None:
            previous = self.period_start
        return replace(newer, previous_period_start=previous)


def pick_subscription(subscriptions: Sequence[SubscriptionView]) -> SubscriptionView | None:
    """A tenant's governing subscription: an entitled one first, then the most recent period."""
    if not subscriptions:
        return None
    return max(
        subscriptions,
        key=lambda s: (s.entitled, s.period_start.timestamp() if s.period_start else 0.0, s.version),
    )


@dataclass(frozen=True)
class Override:
    tenant_id: str
    key: str
    limit: int | None  # None: unlimited
    behaviour: Behaviour | None  # None: keep the plan's


@dataclass(frozen=True)
class Grant:
    grant_id: str
    tenant_id: str
    key: str
    quantity: int
    expires_at: datetime
    created_at: datetime

    def active_at(self, now: datetime) -> bool:
        return self.created_at <= now < self.expires_at


@dataclass(frozen=True)
class Source:
    kind: str  # plan, add_on, override, grant, free_fallback
    reference: str
    limit: int | None


@dataclass(frozen=True)
class Resolved:
    entitlement: Entitlement
    sources: tuple[Source, ...]


@dataclass(frozen=True)
class Resolution:
    tenant_id: str
    subscription: SubscriptionView | None
    plan: Plan | None
    denied: bool
    entitlements: Mapping[str, Resolved]
    billing: BillingPeriod | None
    # The earliest instant at which this resolution changes by itself (a grant expires).
    valid_until: datetime | None = None

    @property
    def thresholds(self) -> tuple[int, ...]:
        return self.plan.spec.threshold_percents if self.plan else ()


def _add_limits(a: int | None, b: int | None) -> int | None:
    return None if a is None or b is None else a + b


def resolve(
    tenant_id: str,
    subscription: SubscriptionView | None,
    plan: Plan | None,
    add_ons: Sequence[AddOn],
    overrides: Sequence[Override],
    grants: Sequence[Grant],
    free_plan: Plan | None,
    now: datetime,
) -> Resolution:
    entitled = subscription is not None and subscription.entitled and plan is not None
    if entitled:
        assert plan is not None
        base, kind, billing = plan, "plan", subscription.billing_period if subscription else None
    elif free_plan is not None:
        base, kind, billing, add_ons = free_plan, "free_fallback", None, ()
    else:
        return Resolution(tenant_id, subscription, None, True, {}, None)

    resolved: dict[str, Resolved] = {
        e.key: Resolved(e, (Source(kind, base.reference, e.limit),)) for e in base.spec.entitlements
    }
    for add_on in add_ons:
        for extra in add_on.entitlements:
            source = Source("add_on", add_on.code, extra.limit)
            current = resolved.get(extra.key)
            if current is None:
                resolved[extra.key] = Resolved(extra, (source,))
                continue
            merged = replace(
                current.entitlement,
                limit=_add_limits(current.entitlement.limit, extra.limit),
                included_quantity=current.entitlement.included_quantity + extra.included_quantity,
            )
            resolved[extra.key] = Resolved(merged, (*current.sources, source))
    for override in overrides:
        current = resolved.get(override.key)
        if current is None:
            continue
        changed = replace(
            current.entitlement,
            limit=override.limit,
            behaviour=override.behaviour or current.entitlement.behaviour,
        )
        resolved[override.key] = Resolved(
            changed, (*current.sources, Source("override", tenant_id, override.limit))
        )
    valid_until: datetime | None = None
    for grant in grants:
        current = resolved.get(grant.key)
        if current is None:
            continue
        if grant.active_at(now):
            valid_until = min(valid_until or grant.expires_at, grant.expires_at)
            changed = replace(
                current.entitlement, limit=_add_limits(current.entitlement.limit, grant.quantity)
            )
            resolved[grant.key] = Resolved(
                changed, (*current.sources, Source("grant", grant.grant_id, grant.quantity))
            )
        elif grant.created_at > now:
            valid_until = min(valid_until or grant.created_at, grant.created_at)
    return Resolution(tenant_id, subscription, base, False, resolved, billing, valid_until)
