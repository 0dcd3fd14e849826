"""Policy validation: every problem named by its field, a valid policy accepted."""

from datetime import timedelta

import pytest

from billing_common.errors import InvalidArgument
from dunning.domain.policy import DEFAULT_POLICY, AdaptiveSchedule, FixedSchedule, RetryPolicy


def fixed(*days: int, attempts: int = 4, window_days: int = 14) -> RetryPolicy:
    return RetryPolicy("m1", attempts, timedelta(days=window_days), FixedSchedule(days))


def violations(policy: RetryPolicy) -> dict[str, str]:
    with pytest.raises(InvalidArgument) as refused:
        policy.validate()
    return {v.field: v.description for v in refused.value.violations}


def test_the_default_policy_is_stripes_eight_tries_in_two_weeks() -> None:
    DEFAULT_POLICY.validate()
    assert DEFAULT_POLICY.max_attempts == 8
    assert DEFAULT_POLICY.max_window == timedelta(days=14)
    assert isinstance(DEFAULT_POLICY.schedule, AdaptiveSchedule)


def test_a_fixed_schedule_of_increasing_days_inside_the_window_is_valid() -> None:
    fixed(1, 3, 5, 7).validate()


def test_bad_fixed_schedules_name_each_offending_day() -> None:
    assert violations(fixed(1, 3, 3, 20)) == {
        "policy.fixed.day_offsets[2]": "must be greater than the day before it",
        "policy.fixed.day_offsets[3]": "falls after max_window",
    }
    assert violations(fixed(0, 2)) == {
        "policy.fixed.day_offsets[0]": "must be at least 1 (days after the first failure)"
    }
    assert violations(fixed()) == {"policy.fixed.day_offsets": "must name at least one day"}
    assert "policy.fixed.day_offsets" in violations(fixed(1, 2, 3, attempts=2))


def test_limits_on_attempts_window_and_lead() -> None:
    policy = RetryPolicy(
        "m1",
        0,
        timedelta(minutes=5),
        AdaptiveSchedule(timedelta(minutes=1), timedelta(minutes=2)),
        reminder_lead=timedelta(hours=-1),
    )
    found = violations(policy)
    assert set(found) == {"policy.max_attempts", "policy.max_window", "policy.reminder_lead"}


def test_a_schedule_is_required() -> None:
    assert violations(RetryPolicy("m1", 3, timedelta(days=7), None)) == {
        "policy.schedule": "is required: fixed or adaptive"
    }


def test_bad_adaptive_gaps_are_refused() -> None:
    policy = RetryPolicy("m1", 3, timedelta(days=7), AdaptiveSchedule(timedelta(days=2), timedelta(days=1)))
    assert violations(policy) == {"policy.adaptive.max_gap": "must not be shorter than min_gap"}
    tiny = RetryPolicy("m1", 3, timedelta(days=7), AdaptiveSchedule(timedelta(seconds=1), timedelta(days=1)))
    assert "policy.adaptive.min_gap" in violations(tiny)
    wide = RetryPolicy("m1", 3, timedelta(days=7), AdaptiveSchedule(timedelta(days=8), timedelta(days=9)))
    assert violations(wide) == {"policy.adaptive.min_gap": "must not be longer than max_window"}
