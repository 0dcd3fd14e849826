"""Periods of time partitions and the retention cutoff: what is dropped, what is kept."""

from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from billing_common.partitions import Step, TimePartitioned

instants = st.datetimes(
    min_value=datetime(2010, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)
)
steps = st.sampled_from(list(Step))


@given(instants, steps)
def test_every_instant_lies_in_exactly_one_period_and_periods_follow_each_other(
    instant: datetime, step: Step
) -> None:
    start = step.start(instant)
    end = step.after(start)
    assert start <= instant < end
    assert step.start(end) == end and step.start(end - timedelta(microseconds=1)) == start
    assert step.suffix(start) < step.suffix(end)  # partition names sort in time order


@given(
    instants,
    steps,
    st.integers(min_value=0, max_value=800),
    st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=800)),
)
def test_a_row_within_the_retention_is_never_in_a_dropped_partition(
    now: datetime, step: Step, retention_days: int, age: timedelta
) -> None:
    retention = timedelta(days=retention_days + (1 if step is Step.DAY else 31))
    table = TimePartitioned("inbox", "occurred_at", step, retention)
    row = now - age
    partition_end = step.after(step.start(row))
    dropped = partition_end <= table.cutoff(now)
    if row >= now - retention:
        assert not dropped
    else:  # kept at most one period longer than the retention
        assert dropped or row >= now - retention - (partition_end - step.start(row))


def test_months_end_on_the_first_of_the_next_whatever_their_length() -> None:
    assert Step.MONTH.after(datetime(2027, 1, 1, tzinfo=UTC)) == datetime(2027, 2, 1, tzinfo=UTC)
    assert Step.MONTH.after(datetime(2028, 2, 1, tzinfo=UTC)) == datetime(2028, 3, 1, tzinfo=UTC)
    assert Step.MONTH.after(datetime(2027, 12, 1, tzinfo=UTC)) == datetime(2028, 1, 1, tzinfo=UTC)
    assert Step.MONTH.start(datetime(2027, 3, 31, 23, 59, tzinfo=UTC)) == datetime(2027, 3, 1, tzinfo=UTC)
