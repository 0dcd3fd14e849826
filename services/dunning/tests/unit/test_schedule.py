"""Fixed and adaptive schedules: when the next attempt happens and when there is none."""

from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from dunning.domain.estimator import AttemptContext, Observation, OutcomeCounts
from dunning.domain.policy import AdaptiveSchedule, FixedSchedule, RetryPolicy
from dunning.domain.schedule import Planning, plan_next_attempt

FIRST = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)  # a Monday, noon
DAY = timedelta(days=1)


def fixed(*days: int, attempts: int = 4) -> Planning:
    return Planning(RetryPolicy("m", attempts, timedelta(days=14), FixedSchedule(days)))


def adaptive(attempts: int = 8, min_gap: timedelta = DAY, max_gap: timedelta = 3 * DAY) -> Planning:
    return Planning(RetryPolicy("m", attempts, timedelta(days=14), AdaptiveSchedule(min_gap, max_gap)))


def plan(planning: Planning, started: int, now: datetime, previous: datetime | None = None):  # type: ignore[no-untyped-def]
    return plan_next_attempt(
        planning,
        decline_code="insufficient_funds",
        first_failed_at=FIRST,
        attempts_started=started,
        previous_attempt_at=previous,
        now=now,
    )


def test_a_fixed_schedule_follows_its_days_then_stops() -> None:
    planning = fixed(1, 3, 5, 7)
    times = [plan(planning, n, FIRST) for n in range(5)]
    assert [t.at if t else None for t in times] == [FIRST + d * DAY for d in (1, 3, 5, 7)] + [None]
    first = times[0]
    assert first is not None
    assert first.reason == "fixed schedule: day 1 after the first failure"
    assert 0 < first.estimate.basis_points < 10_000


def test_a_fixed_day_already_past_is_attempted_now() -> None:
    late = FIRST + 4 * DAY
    found = plan(fixed(1, 3, 5, 7), 1, late)
    assert found is not None and found.at == late


def test_max_attempts_caps_a_fixed_schedule() -> None:
    assert plan(fixed(1, 3, 5, attempts=2), 2, FIRST) is None


def test_nothing_is_planned_after_the_window() -> None:
    assert plan(adaptive(), 1, FIRST + 15 * DAY) is None
    assert plan(fixed(1, 3), 0, FIRST + 15 * DAY) is None


def test_adaptive_with_no_data_picks_a_morning_hour_within_the_gaps() -> None:
    found = plan(adaptive(), 0, FIRST)
    assert found is not None
    assert FIRST + DAY <= found.at <= FIRST + 3 * DAY
    assert 6 <= found.at.hour < 12  # the prior's best hours
    assert found.estimate.sample_size == 0
    assert found.reason.startswith("adaptive: best of ")


def test_adaptive_follows_the_data_to_a_better_hour() -> None:
    """Past outcomes say 22:00 on the second day works best for this code."""
    good = AttemptContext("insufficient_funds", 1, 1, weekday=1, hour=22)
    bad = [AttemptContext("insufficient_funds", 1, 1, weekday=1, hour=h) for h in range(24) if h != 22]
    history = [Observation(good, True)] * 300 + [Observation(c, False) for c in bad for _ in range(30)]
    planning = Planning(adaptive().policy, OutcomeCounts.of_observations(history))
    found = plan(planning, 0, FIRST)
    assert found is not None
    assert found.at.hour == 22
    assert found.estimate.sample_size == len(history)
    assert found.estimate.basis_points > 5000


def test_adaptive_leaves_room_for_the_remaining_attempts() -> None:
    planning = adaptive(attempts=8, min_gap=DAY, max_gap=10 * DAY)
    found = plan(planning, 0, FIRST)
    assert found is not None
    # Seven more attempts at least a day apart must still fit in the 14-day window.
    assert found.at <= FIRST + 7 * DAY


@given(
    st.integers(0, 7),
    st.integers(0, 14 * 24),
    st.integers(1, 48),
    st.integers(0, 72),
)
def test_adaptive_plans_stay_inside_gap_and_window(
    started: int, hours_in: int, min_gap_h: int, extra_h: int
) -> None:
    min_gap = timedelta(hours=min_gap_h)
    planning = adaptive(attempts=8, min_gap=min_gap, max_gap=min_gap + timedelta(hours=extra_h))
    previous = FIRST + timedelta(hours=hours_in)
    now = previous
    found = plan(planning, started, now, previous if started else None)
    window_end = FIRST + timedelta(days=14)
    if found is None:
        assert (
            started >= 8
            or now + min_gap > window_end
            or (previous if started else FIRST) + min_gap > window_end
        )
        return
    anchor = previous if started else FIRST
    assert found.at >= max(now, anchor + min_gap)
    assert found.at <= window_end
