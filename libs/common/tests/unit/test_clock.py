from datetime import UTC, datetime, timedelta

import pytest

from billing_common.clock import ControllableClock


def test_controllable_clock_moves_only_forward() -> None:
    clock = ControllableClock(datetime(2026, 1, 31, 3, 1, tzinfo=UTC))
    assert clock.advance(timedelta(days=1)) == datetime(2026, 2, 1, 3, 1, tzinfo=UTC)
    with pytest.raises(ValueError):
        clock.advance(timedelta(seconds=-1))
    with pytest.raises(ValueError):
        clock.set(datetime(2026, 3, 1))
