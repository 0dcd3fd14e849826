from datetime import UTC, datetime, timedelta, timezone

from google.protobuf.timestamp_pb2 import Timestamp
from hypothesis import given
from hypothesis import strategies as st

from billing_common.protos import stamp

OFFSETS = st.sampled_from(
    [None, UTC, timezone(timedelta(hours=-7)), timezone(timedelta(hours=5, minutes=30))]
)


@given(st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30)), OFFSETS)
def test_stamp_sets_what_from_datetime_sets(instant: datetime, offset: timezone | None) -> None:
    if offset is not None:
        instant = instant.replace(tzinfo=offset)
    expected, stamped = Timestamp(), Timestamp()
    expected.FromDatetime(instant)
    stamp(stamped, instant)
    assert (stamped.seconds, stamped.nanos) == (expected.seconds, expected.nanos)


def test_stamp_of_no_instant_changes_nothing() -> None:
    ts = Timestamp(seconds=5)
    stamp(ts, None)
    assert ts.seconds == 5
