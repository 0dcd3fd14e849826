from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from quota.domain.catalog import Period
from quota.domain.periods import EPOCH, BillingPeriod, Window, calendar_month, window_for

instants = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)
)


@given(instants)
def test_calendar_windows_contain_the_instant_and_start_at_utc_midnight(at: datetime) -> None:
    for period in (Period.CALENDAR_DAY, Period.CALENDAR_MONTH):
        window = window_for(period, at, None)
        assert window is not None and window.end is not None
        assert window.contains(at)
        assert (window.start.hour, window.start.minute, window.start.second) == (0, 0, 0)
    month = calendar_month(at)
    assert month.start.day == 1 and month.end is not None and month.end.day == 1
    assert calendar_month(month.end).start == month.end  # months tile time without gaps


def test_december_rolls_into_january() -> None:
    window = calendar_month(datetime(2026, 12, 31, 23, 59, tzinfo=UTC))
    assert window == Window(datetime(2026, 12, 1, tzinfo=UTC), datetime(2027, 1, 1, tzinfo=UTC))


def test_calendar_day_uses_utc_even_for_other_offsets() -> None:
    from datetime import timezone

    at = datetime(2026, 3, 1, 1, 0, tzinfo=timezone(timedelta(hours=5)))  # 2026-02-28 20:00 UTC
    window = window_for(Period.CALENDAR_DAY, at, None)
    assert window is not None and window.start == datetime(2026, 2, 28, tzinfo=UTC)


def test_standing_counts_never_reset() -> None:
    assert window_for(Period.NONE, datetime(2030, 5, 5, tzinfo=UTC), None) == Window(EPOCH, None)


@given(instants, st.integers(min_value=1, max_value=40), st.integers(min_value=1, max_value=40))
def test_billing_windows_follow_the_subscription_period(start: datetime, prev_days: int, days: int) -> None:
    previous = start - timedelta(days=prev_days)
    billing = BillingPeriod(start, start + timedelta(days=days), previous)
    assert window_for(Period.BILLING, start, billing) == Window(start, billing.end)
    assert window_for(Period.BILLING, billing.end - timedelta(microseconds=1), billing) == Window(
        start, billing.end
    )
    assert window_for(Period.BILLING, start - timedelta(microseconds=1), billing) == Window(previous, start)
    assert window_for(Period.BILLING, billing.end, billing) == Window(billing.end, None)
    assert window_for(Period.BILLING, previous - timedelta(seconds=1), billing) is None


def test_without_a_billing_period_billing_keys_count_per_calendar_month() -> None:
    at = datetime(2026, 2, 10, tzinfo=UTC)
    assert window_for(Period.BILLING, at, None) == calendar_month(at)


def test_a_window_accepts_late_events_only_within_the_grace() -> None:
    window = Window(datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 2, 1, tzinfo=UTC))
    grace = timedelta(hours=1)
    assert window.open_at(datetime(2026, 2, 1, 0, 59, tzinfo=UTC), grace)
    assert not window.open_at(datetime(2026, 2, 1, 1, 0, tzinfo=UTC), grace)
