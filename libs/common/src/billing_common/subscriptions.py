"""A subscription's billing frequency and status: recurring owns subscriptions, quota projects them, and
both read them in these words (the contracts' enums are matched by
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
