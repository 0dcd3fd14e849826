"""Retry policies: how many attempts, within what window, on which schedule."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from billing_common.errors import Violations
from billing_common.subscriptions import ExhaustedAction

MAX_ATTEMPTS_LIMIT = 25
MIN_WINDOW = timedelta(hours=1)
MAX_WINDOW_LIMIT = timedelta(days=90)
MIN_GAP_LIMIT = timedelta(minutes=1)
MAX_MERCHANT_ID = 200


@dataclass(frozen=True)
class FixedSchedule:
    """Attempts on given days after the first failure, e.g. days 1, 3, 5, 7."""

    day_offsets: tuple[int, ...]


@dataclass(frozen=True)
class AdaptiveSchedule:
    """Each attempt at the time with the best estimated chance, between min_gap and max_gap after
    the previous one."""

    min_gap: timedelta
    max_gap: timedelta


Schedule = FixedSchedule | AdaptiveSchedule


@dataclass(frozen=True)
class RetryPolicy:
    merchant_id: str
    max_attempts: int
    max_window: timedelta
    schedule: Schedule | None
    exhausted_action: ExhaustedAction = ExhaustedAction.SUSPEND
    # dunning.reminder_due goes out this long before each attempt (zero: no reminders).
    reminder_lead: timedelta = timedelta(0)

    def validate(self) -> None:
        """Refuse a policy that cannot be followed, naming every offending field."""
        v = Violations()
        v.check(
            len(self.merchant_id) <= MAX_MERCHANT_ID, "policy.merchant_id", "is longer than 200 characters"
        )
        v.check(
            1 <= self.max_attempts <= MAX_ATTEMPTS_LIMIT,
            "policy.max_attempts",
            f"must be between 1 and {MAX_ATTEMPTS_LIMIT}",
        )
        v.check(
            MIN_WINDOW <= self.max_window <= MAX_WINDOW_LIMIT,
            "policy.max_window",
            "must be between 1 hour and 90 days",
        )
        v.check(
            timedelta(0) <= self.reminder_lead < self.max_window,
            "policy.reminder_lead",
            "must be zero or positive and shorter than max_window",
        )
        schedule = self.schedule
        if schedule is None:
            v.add("policy.schedule", "is required: fixed or adaptive")
        elif isinstance(schedule, FixedSchedule):
            _check_fixed(v, schedule, self.max_attempts, self.max_window)
        else:
            _check_adaptive(v, schedule, self.max_window)
        v.raise_if_any()


def _check_fixed(v: Violations, schedule: FixedSchedule, max_attempts: int, max_window: timedelta) -> None:
    offsets = schedule.day_offsets
    if not offsets:
        v.add("policy.fixed.day_offsets", "must name at least one day")
        return
    if len(offsets) > max_attempts:
        v.add("policy.fixed.day_offsets", "has more days than max_attempts allows")
    for index, day in enumerate(offsets):
        name = f"policy.fixed.day_offsets[{index}]"
        if day < 1:
            v.add(name, "must be at least 1 (days after the first failure)")
        elif index and day <= offsets[index - 1]:
            v.add(name, "must be greater than the day before it")
        elif timedelta(days=day) > max_window:
            v.add(name, "falls after max_window")


def _check_adaptive(v: Violations, schedule: AdaptiveSchedule, max_window: timedelta) -> None:
    if schedule.min_gap < MIN_GAP_LIMIT:
        v.add("policy.adaptive.min_gap", "must be at least 1 minute")
    elif schedule.min_gap > max_window:
        v.add("policy.adaptive.min_gap", "must not be longer than max_window")
    if schedule.max_gap < schedule.min_gap:
        v.add("policy.adaptive.max_gap", "must not be shorter than min_gap")


# Stripe's default: up to 8 tries within 2 weeks, timed by the estimator.
DEFAULT_POLICY = RetryPolicy(
    merchant_id="",
    max_attempts=8,
    max_window=timedelta(days=14),
    schedule=AdaptiveSchedule(min_gap=timedelta(days=1), max_gap=timedelta(days=4)),
    exhausted_action=ExhaustedAction.SUSPEND,
    reminder_lead=timedelta(hours=12),
)
