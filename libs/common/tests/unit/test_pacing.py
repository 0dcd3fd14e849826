"""The pacer's spacing, lateness rule and reading of Redis's clock: no rolling second ever holds
more than the limit."""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass
from itertools import count

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import REGISTRY
from redis.asyncio import Redis

from billing_common.pacing import MAX_DRIFT, Booking, RedisPacer, RemoteClock, Spacing, check_headroom
from billing_common.settings import SettingsError


def busiest_second(times: list[float]) -> int:
    """The most times within any one second [t, t + 1), whatever its alignment."""
    times = sorted(times)
    busiest = start = 0
    for end, at in enumerate(times):
        while times[start] <= at - 1.0:
            start += 1
        busiest = max(busiest, end - start + 1)
    return busiest


@dataclass(frozen=True)
class RedisTime:
    """Redis's clock against ours (the gateway's): off by `offset`, running `rate` times as fast."""

    offset: float
    rate: float

    def reads(self, local: float) -> float:
        return self.offset + local * self.rate

    def local(self, remote: float) -> float:
        return (remote - self.offset) / self.rate


def sent_times(
    spacing: Spacing,
    arrivals: list[float],
    lateness: list[float],
    answers: list[tuple[float, float]],
    redis: RedisTime,
) -> list[float]:
    """When each turn reaches the gateway, on its clock (ours). A turn books as `RedisPacer.book`
    does: Redis books the next free slot on its own clock (never before its now), reading that
    clock `read` of the way through an answer that takes `seconds`; the turn goes at its slot's
    `go_at`, woken late; a turn too late for its slot books again when it woke. Turn n's k-th
    booking takes the (n + k)-th of `answers` and of `lateness` (cycled), until it has used each
    list once, and then a quick answer and no lateness, so that every turn goes in the end."""
    remote = RemoteClock()
    next_free = -math.inf  # on Redis's clock
    order = count()
    # (our time, order, turn, bookings so far, when its slot is due at the earliest)
    events: list[tuple[float, int, int, int, float | None]] = [
        (at, next(order), turn, 0, None) for turn, at in enumerate(arrivals)
    ]
    heapq.heapify(events)
    sent: list[float] = []
    while events:
        at, _, turn, booked, due = heapq.heappop(events)
        if due is not None:
            late = lateness[(turn + booked) % len(lateness)] if booked <= len(lateness) else 0.0
            if spacing.on_time(at + late - due):
                sent.append(at + late)
                continue
            at += late
        seconds, read = answers[(turn + booked) % len(answers)] if booked < len(answers) else (0.0, 0.0)
        redis_now = redis.reads(at + read * seconds)
        slot = max(next_free, redis_now)
        next_free = slot + spacing.interval_s
        remote.observe(at, at + seconds, redis_now)
        earliest, latest = remote.local_span(slot)
        booking = Booking(1, latest, earliest, spacing.interval_s)
        go = max(booking.go_at(0), at + seconds)
        heapq.heappush(events, (go, next(order), turn, booked + 1, booking.due(0)))
    return sent


@settings(max_examples=300, deadline=None)
@given(
    limit=st.integers(1, 1000),
    headroom_percent=st.integers(1, 30),
    arrival_gaps=st.lists(st.floats(0, 0.05), min_size=1, max_size=8),
    lateness=st.lists(st.floats(0, 0.1), min_size=1, max_size=12),
    answers=st.lists(st.tuples(st.floats(0, 0.05), st.floats(0, 1)), min_size=1, max_size=8),
    offset=st.floats(-1e6, 1e6),
    drift=st.floats(-1e-6, 1e-6),
)
def test_no_rolling_second_holds_more_than_the_limit_however_late_turns_wake_or_answers_come(
    limit: int,
    headroom_percent: int,
    arrival_gaps: list[float],
    lateness: list[float],
    answers: list[tuple[float, float]],
    offset: float,
    drift: float,
) -> None:
    spacing = Spacing.of(limit, headroom_percent)
    arrivals, at = [], 0.0
    for n in range(2 * limit + 2):
        at += arrival_gaps[n % len(arrival_gaps)]
        arrivals.append(at)

    sent = sent_times(spacing, arrivals, lateness, answers, RedisTime(offset, 1 + drift))

    assert len(sent) == len(arrivals)
    assert busiest_second(sent) <= limit


@settings(max_examples=300, deadline=None)
@given(
    offset=st.floats(-1e6, 1e6),
    drift=st.floats(-MAX_DRIFT, MAX_DRIFT),
    exchanges=st.lists(
        st.tuples(st.floats(0, 100.0), st.floats(0, 0.1), st.floats(0, 1)), min_size=1, max_size=20
    ),
)
def test_redis_clock_falls_within_the_span_the_bookings_give_however_slow_the_answers_or_far_apart(
    offset: float, drift: float, exchanges: list[tuple[float, float, float]]
) -> None:
    redis = RedisTime(offset, 1 + drift)
    remote = RemoteClock()
    at = 0.0
    for pause, seconds, read in exchanges:
        at += pause
        remote.observe(at, at + seconds, redis.reads(at + read * seconds))
        at += seconds

        earliest, latest = remote.local_span(redis.reads(at))

        assert earliest - 1e-6 <= at <= latest + 1e-6


def test_an_answer_that_waited_in_a_busy_event_loop_leaves_the_turns_it_booked_on_time() -> None:
    """Redis answered at once, but the event loop came back to it 30 ms later: its slots are where
    the quick answers before it put them, not 30 ms later."""
    remote = RemoteClock()
    remote.observe(10.000, 10.0004, 6010.0002)  # a quick answer: Redis is 6,000 s ahead

    remote.observe(11.000, 11.030, 6011.0001)
    earliest, latest = remote.local_span(6011.1001)

    assert latest - earliest < 0.002  # not the 30 ms the answer waited
    assert earliest <= 11.1001 <= latest


def test_a_step_of_redis_clock_is_taken_up_by_the_next_booking() -> None:
    remote = RemoteClock()
    remote.observe(10.000, 10.001, 5010.0005)

    remote.observe(11.000, 11.001, 7011.0005)  # stepped 2,000 s on

    earliest, latest = remote.local_span(7011.1005)
    assert earliest <= 11.1 <= latest and latest - earliest < 0.002


def test_the_spacing_is_whole_microseconds_never_closer_than_the_headroom_asks() -> None:
    spacing = Spacing.of(200, 2)

    assert spacing.interval_us == 5103  # 1 / 196 s rounded up
    assert spacing.late_s == pytest.approx(0.8 * (200 * 0.005103 - 1))
    assert spacing.on_time(0.016) and not spacing.on_time(0.017)


def test_a_high_limit_is_spaced_rounded_up_so_its_slots_still_absorb_lateness() -> None:
    spacing = Spacing.of(7000, 2)

    assert spacing.interval_us == 146  # 145.77 rounded up: 145 would fit 6,896 slots in 1 s, not 6,860
    assert spacing.late_s == pytest.approx(0.8 * (7000 * 0.000146 - 1))


@pytest.mark.parametrize("percent", [0, 100, -5])
def test_a_headroom_that_absorbs_no_lateness_or_leaves_no_slots_is_refused_naming_the_setting(
    percent: int,
) -> None:
    with pytest.raises(SettingsError, match="PACER_HEADROOM"):
        check_headroom(percent, "PACER_HEADROOM")


def test_a_turn_is_on_time_on_the_injected_clock_within_four_fifths_of_what_its_spacing_absorbs() -> None:
    now = [100.0]
    pacer = RedisPacer(Redis(), "ns", {"gw": 200, "off": 0}, headroom_percent=2, clock=lambda: now[0])

    late_turns = REGISTRY.get_sample_value("billing_pacer_late_turns_total", {"gateway": "gw"}) or 0

    assert pacer.now() == 100.0
    assert pacer.on_time("gw", 99.984)  # 16 ms late
    assert not pacer.on_time("gw", 99.983)
    # The slot a late turn gives up is counted, so a rate below the limit can be told apart.
    assert REGISTRY.get_sample_value("billing_pacer_late_turns_total", {"gateway": "gw"}) == late_turns + 1
    assert pacer.on_time("off", 0.0) and not pacer.limited("off")
