"""A subscription's billing frequency and status, and what becomes of it when dunning runs out of
attempts: recurring owns subscriptions, quota projects them, dunning names the action, and they read
them in these words (the contracts' enums are matched by
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


class ExhaustedAction(StrEnum):
    """What becomes of the subscription when dunning runs out of attempts (a merchant's policy)."""

    SUSPEND = "suspend"
    CANCEL = "cancel"
