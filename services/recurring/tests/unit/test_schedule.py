"""Due dates and periods: short months, every frequency, over centuries of calendar."""

from __future__ import annotations

import itertools
from collections import Counter
from datetime import date, timedelta

from hypothesis import given
from hypothesis import strategies as st

from billing_common.subscriptions import Frequency
from recurring.domain.schedule import (
    first_due_date,
    is_monthly_due,
    monthly_due_date,
    next_due_date,
    period_starting,
)


def test_short_months_fall_on_the_last_day() -> None:
    assert monthly_due_date(2025, 2, 31) == date(2025, 2, 28)
    assert monthly_due_date(2024, 2, 30) == date(2024, 2, 29)
    assert monthly_due_date(2100, 2, 29) == date(2100, 2, 28)  # not a leap year
    assert monthly_due_date(2000, 2, 29) == date(2000, 2, 29)  # a leap year
    assert monthly_due_date(2025, 4, 31) == date(2025, 4, 30)
    assert monthly_due_date(2025, 5, 31) == date(2025, 5, 31)


def test_every_date_of_four_centuries_is_due_exactly_once_per_month_for_each_anchor() -> None:
    """1900-2299: includes 1900/2100/2200 (not leap) and 2000 (leap)."""
    day = date(1900, 1, 1)
    end = date(2300, 1, 1)
    per_month: Counter[tuple[int, int, int]] = Counter()
    while day < end:
        for anchor in range(28, 32):
            if is_monthly_due(anchor, day):
                per_month[(day.year, day.month, anchor)] += 1
                last = (day + timedelta(days=1)).month != day.month
                assert day.day == anchor or (last and anchor > day.day)
        day += timedelta(days=1)
    assert len(per_month) == 400 * 12 * 4
    assert set(per_month.values()) == {1}


@given(st.dates(min_value=date(1600, 1, 1), max_value=date(2399, 12, 31)), st.integers(1, 31))
def test_monthly_due_dates_walk_one_per_month_and_never_skip(start: date, anchor: int) -> None:
    due = first_due_date(Frequency.MONTHLY, start, anchor)
    assert due >= start and (due - start).days < 62
    for _ in range(30):
        following = next_due_date(Frequency.MONTHLY, due, anchor)
        assert following is not None
        months_apart = (following.year - due.year) * 12 + following.month - due.month
        assert months_apart == 1
        assert following.day == min(anchor, monthly_due_date(following.year, following.month, 31).day)
        assert is_monthly_due(anchor, following)
        due = following


@given(
    st.dates(min_value=date(1700, 1, 1), max_value=date(2300, 1, 1)),
    st.sampled_from([(Frequency.WEEKLY, 7), (Frequency.BIWEEKLY, 14), (Frequency.FOUR_WEEKLY, 28)]),
)
def test_fixed_frequencies_are_due_every_n_days_over_years(start: date, case: tuple[Frequency, int]) -> None:
    frequency, step = case
    due = first_due_date(frequency, start, start.day)
    assert due == start
    dates = [due]
    while dates[-1] < start + timedelta(days=3 * 366):
        following = next_due_date(frequency, dates[-1], start.day)
        assert following is not None
        dates.append(following)
    assert all((b - a).days == step for a, b in itertools.pairwise(dates))
    assert all((d - start).days % step == 0 for d in dates)
    period = period_starting(frequency, due, start.day)
    assert period.days == step


@given(st.dates(min_value=date(1900, 1, 1), max_value=date(2300, 1, 1)))
def test_one_time_is_due_once_on_its_date(day: date) -> None:
    assert first_due_date(Frequency.ONE_TIME, day, day.day) == day
    assert next_due_date(Frequency.ONE_TIME, day, day.day) is None
    assert period_starting(Frequency.ONE_TIME, day, day.day).days == 1


def test_monthly_period_runs_to_the_next_due_date() -> None:
    period = period_starting(Frequency.MONTHLY, date(2025, 1, 31), 31)
    assert (period.start, period.end) == (date(2025, 1, 31), date(2025, 2, 28))
    period = period_starting(Frequency.MONTHLY, date(2025, 2, 28), 31)
    assert period.end == date(2025, 3, 31)
