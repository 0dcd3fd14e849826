"""A subscription's billing frequency, status and plan tier: recurring owns subscriptions, quota projects
them and maps tiers to plans, and both read them in these words (the contracts' enums are matched by
name in billing_common.protos)."""

from __future__ import annotations

from enum import StrEnum


class Frequency(StrEnum):
    MONTHLY = "monthly"
    WEEKLY = "weekly"
    BIWEEKLY = "biweekly"
    FOUR_WEEKLY = "four_weekly"
    ONE_TIME = "one_time"


class SubscriptionStatus(StrEnum):
    TRIALING = "trialing"
    ACTIVE = "active"
    PAST_DUE = "past_due"
    PAUSED = "paused"
    SUSPENDED = "suspended"
    CANCELLED = "cancelled"
    COMPLETED = "completed"


class PlanTier(StrEnum):
    """A billing tier as the key of quota's tier-to-plan mapping, which tier-mapped subscriptions follow."""

    LITE = "lite"
    PLUS = "plus"
    PRO = "pro"
