"""When the next attempt happens: a fixed list of days, or the best estimated time in a range."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from dunning.domain import estimator
from dunning.domain.estimator import DEFAULT_PRIOR, Estimate, OutcomeCounts, Prior
from dunning.domain.policy import FixedSchedule, RetryPolicy

HOUR = timedelta(hours=1)


@dataclass(frozen=True)
class Planning:
    """Everything a decision about timing needs: the merchant's policy and the record so far."""

    policy: RetryPolicy
    counts: OutcomeCounts = field(default_factory=OutcomeCounts)
    prior: Prior = DEFAULT_PRIOR


@dataclass(frozen=True)
class PlannedAttempt:
    at: datetime
    estimate: Estimate
    reason: str


def window_end(policy: RetryPolicy, first_failed_at: datetime) -> datetime:
    return first_failed_at + policy.max_window


def estimate_at(
    planning: Planning, decline_code: str, attempt_ordinal: int, first_failed_at: datetime, when: datetime
) -> Estimate:
    return estimator.estimate_at(
        decline_code, attempt_ordinal, first_failed_at, when, planning.counts, planning.prior
    )


def plan_next_attempt(
    planning: Planning,
    *,
    decline_code: str,
    first_failed_at: datetime,
    attempts_started: int,
    previous_attempt_at: datetime | None,
    now: datetime,
) -> PlannedAttempt | None:
    """The next attempt, or None when the policy allows no more (attempts or window used up)."""
    policy = planning.policy
    ordinal = attempts_started + 1
    end = window_end(policy, first_failed_at)
    if ordinal > policy.max_attempts or now > end or policy.schedule is None:
        return None
    schedule = policy.schedule
    if isinstance(schedule, FixedSchedule):
        if ordinal > len(schedule.day_offsets):
            return None
        day = schedule.day_offsets[ordinal - 1]
        at = max(now, first_failed_at + timedelta(days=day))
        if at > end:
            return None
        chance = estimate_at(planning, decline_code, ordinal, first_failed_at, at)
        return PlannedAttempt(at, chance, f"fixed schedule: day {day} after the first failure")

    anchor = previous_attempt_at or first_failed_at
    earliest = max(now, anchor + schedule.min_gap)
    if earliest > end:
        return None
    # Leave room for the attempts still allowed after this one.
    room_for_rest = end - (policy.max_attempts - ordinal) * schedule.min_gap
    latest = max(earliest, min(anchor + schedule.max_gap, room_for_rest, end))
    best_at, best = earliest, estimate_at(planning, decline_code, ordinal, first_failed_at, earliest)
    candidates = 1
    candidate = _next_hour(earliest)
    while candidate <= latest:
        chance = estimate_at(planning, decline_code, ordinal, first_failed_at, candidate)
        candidates += 1
        if chance.probability > best.probability:
            best_at, best = candidate, chance
        candidate += HOUR
    return PlannedAttempt(
        best_at,
        best,
        f"adaptive: best of {candidates} times between {earliest:%Y-%m-%d %H:%M} and "
        f"{latest:%Y-%m-%d %H:%M} UTC",
    )


def _next_hour(instant: datetime) -> datetime:
    return instant.replace(minute=0, second=0, microsecond=0) + HOUR
