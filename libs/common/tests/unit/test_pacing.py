"""The pacer's spacing and lateness rule: no rolling second ever holds more than the limit."""

from __future__ import annotations

import heapq
from itertools import count

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import REGISTRY
from redis.asyncio import Redis

from billing_common.pacing import RedisPacer, Spacing, check_headroom
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


def sent_times(spacing: Spacing, arrivals: list[float], lateness: list[float]) -> list[float]:
    """When each turn reaches the gateway: slots booked as the Redis script books them (the next
    free one, never before now), each wake-up late by the next of `lateness` then 0 (cycled, so
    that every turn goes in the end); a turn too late for its slot books again when it woke."""
    lateness = [*lateness, 0.0]
    next_free = 0.0
    wakes = count()
    order = count()
    events = [(at, next(order), False) for at in arrivals]
    heapq.heapify(events)
    sent: list[float] = []
    while events:
        at, _, woken = heapq.heappop(events)
        if woken:
            late = lateness[next(wakes) % len(lateness)]
            if spacing.on_time(late):
                sent.append(at + late)
                continue
            at += late
        slot = max(next_free, at)
        next_free = slot + spacing.interval_s
        heapq.heappush(events, (slot, next(order), True))
    return sent


@settings(max_examples=300, deadline=None)
@given(
    limit=st.integers(1, 1000),
    headroom_percent=st.integers(1, 30),
    arrival_gaps=st.lists(st.floats(0, 0.05), min_size=1, max_size=8),
    lateness=st.lists(st.floats(0, 0.1), min_size=1, max_size=12),
)
def test_no_rolling_second_holds_more_than_the_limit_however_late_turns_wake(
    limit: int, headroom_percent: int, arrival_gaps: list[float], lateness: list[float]
) -> None:
    spacing = Spacing.of(limit, headroom_percent)
    arrivals, at = [], 0.0
    for n in range(2 * limit + 2):
        at += arrival_gaps[n % len(arrival_gaps)]
        arrivals.append(at)

    sent = sent_times(spacing, arrivals, lateness)

    assert len(sent) == len(arrivals)
    assert busiest_second(sent) <= limit


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
