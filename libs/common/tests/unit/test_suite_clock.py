import asyncio
from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from billing_common.clock import ControllableClock
from billing_common.suite_clock import SharedClock, pause

WALL = datetime(2026, 12, 2, 9, 30, tzinfo=UTC)
instants = st.datetimes(
    min_value=datetime(2020, 1, 1), max_value=datetime(2999, 12, 31), timezones=st.just(UTC)
)


def test_the_shared_clock_reads_wall_time_until_the_suite_sets_it_then_stands_still() -> None:
    wall = ControllableClock(WALL)
    clock = SharedClock(wall)
    wall.advance(timedelta(minutes=5))
    assert clock.now() == WALL + timedelta(minutes=5) and clock.instant is None
    assert clock.move_to(datetime(2031, 5, 4, 12, tzinfo=UTC))
    wall.advance(timedelta(hours=3))
    assert clock.now() == datetime(2031, 5, 4, 12, tzinfo=UTC)


@given(st.lists(instants, min_size=1, max_size=20))
def test_the_shared_clock_stands_at_the_latest_instant_it_was_given_and_never_goes_back(
    moves: list[datetime],
) -> None:
    clock = SharedClock(ControllableClock(WALL))
    seen = []
    for instant in moves:
        moved = clock.move_to(instant)
        assert moved == (not seen or instant > max(seen))
        seen.append(instant)
        assert clock.now() == max(seen)


async def test_a_pause_on_the_shared_clock_ends_when_the_clock_moves() -> None:
    clock = SharedClock(ControllableClock(WALL))
    waiting = asyncio.create_task(pause(clock, 3600))
    await asyncio.sleep(0)
    assert not waiting.done()
    clock.move_to(datetime(2031, 1, 1, tzinfo=UTC))
    await asyncio.wait_for(waiting, 5)
