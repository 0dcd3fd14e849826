import asyncio
from dataclasses import replace
from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from billing_common.clock import ControllableClock
from billing_common.suite_clock import PodReport, SharedClock, pause, round_is_quiet

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


NOON = datetime(2031, 1, 2, 12, tzinfo=UTC)
reports = st.builds(
    PodReport,
    service=st.sampled_from(["recurring", "dunning", "quota"]),
    pod=st.sampled_from(["a", "b", "c"]),
    instant=st.sampled_from([NOON, NOON - timedelta(days=1), None]),
    due=st.dictionaries(st.sampled_from(["open run items", "events waiting"]), st.integers(0, 3)),
    at=st.just(WALL),
    progress=st.tuples(st.integers(0, 2), st.integers(0, 2)),
)


def _by_pod(found: list[PodReport]) -> dict[str, PodReport]:
    return {r.pod: r for r in found}


@given(st.lists(reports, min_size=1), st.lists(reports, min_size=1))
def test_a_round_in_which_a_pod_has_due_work_or_is_behind_is_never_quiet(
    earlier: list[PodReport], answers: list[PodReport]
) -> None:
    if any(r.busy or r.instant != NOON for r in [*_by_pod(earlier).values(), *_by_pod(answers).values()]):
        assert not round_is_quiet(NOON, _by_pod(answers), _by_pod(earlier))


def test_two_rounds_of_the_same_pods_at_the_instant_idle_and_without_progress_are_quiet() -> None:
    first = [PodReport("recurring", "a", NOON, {"open run items": 0}, WALL, "r1", (7, 3))]
    second = [replace(first[0], round="r2")]
    assert round_is_quiet(NOON, _by_pod(second), _by_pod(first))


def test_a_pod_that_wrote_or_handled_an_event_between_the_rounds_is_not_caught_up() -> None:
    """Work handed on between two answers shows as progress even when no answer caught it as due."""
    first = PodReport("dunning", "a", NOON, {}, WALL, "r1", (7, 3))
    for progress in [(8, 3), (7, 4)]:
        assert not round_is_quiet(NOON, {"a": replace(first, progress=progress)}, {"a": first})


def test_a_pod_that_joined_or_left_between_the_rounds_is_not_caught_up() -> None:
    a = PodReport("recurring", "a", NOON, {}, WALL, "r1", (1, 1))
    b = PodReport("recurring", "b", NOON, {}, WALL, "r1", (1, 1))
    assert not round_is_quiet(NOON, {"a": a, "b": b}, {"a": a})
    assert not round_is_quiet(NOON, {"a": a}, {"a": a, "b": b})
    assert not round_is_quiet(NOON, {}, {})
