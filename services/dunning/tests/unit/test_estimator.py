"""The estimator: the prior alone on day one, the data as it accumulates."""

import dataclasses
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dunning.domain.estimator import (
    DEFAULT_PRIOR,
    MAX_PROBABILITY,
    MIN_PROBABILITY,
    AttemptContext,
    Observation,
    OutcomeCounts,
    estimate,
)

MORNING = AttemptContext("insufficient_funds", 2, 1, weekday=1, hour=9)
NIGHT = AttemptContext("insufficient_funds", 2, 1, weekday=1, hour=3)


def observations(context: AttemptContext, successes: int, failures: int) -> list[Observation]:
    return [Observation(context, True)] * successes + [Observation(context, False)] * failures


def test_with_no_data_the_prior_decides() -> None:
    found = estimate(MORNING, OutcomeCounts())
    expected = 0.3 * 1.0 * 1.0 * 1.0 * 1.1  # base rate x lifts of attempt 2, day 1, Tuesday, 09:00
    assert found.probability == pytest.approx(expected)
    assert found.sample_size == 0
    assert found.basis_points == 3300
    # The prior already prefers the morning to the small hours.
    assert estimate(NIGHT, OutcomeCounts()).probability < found.probability


def test_the_estimate_moves_from_the_prior_to_the_data_as_outcomes_accumulate() -> None:
    """At 03:00 this population recovers 80% of the time, far above the prior's 25%."""
    prior_only = estimate(NIGHT, OutcomeCounts()).probability
    previous = prior_only
    for n in (10, 100, 1000, 10_000):
        counts = OutcomeCounts.of_observations(observations(NIGHT, int(n * 0.8), n - int(n * 0.8)))
        found = estimate(NIGHT, counts)
        assert found.sample_size == n
        assert found.probability > previous
        previous = found.probability
    assert prior_only < 0.3
    assert previous == pytest.approx(0.8, abs=0.01)


def test_data_about_one_hour_changes_the_choice_between_hours() -> None:
    counts = OutcomeCounts.of_observations(observations(NIGHT, 400, 100) + observations(MORNING, 50, 450))
    assert estimate(NIGHT, counts).probability > estimate(MORNING, counts).probability


def test_an_estimate_is_made_once_per_context_and_prior_for_the_same_counts() -> None:
    counts = OutcomeCounts.of_observations(observations(NIGHT, 40, 10))
    first = estimate(NIGHT, counts)

    assert estimate(NIGHT, counts) is first
    assert estimate(MORNING, counts) != first
    assert estimate(NIGHT, counts, dataclasses.replace(DEFAULT_PRIOR, base_strength=1.0)) != first
    again = estimate(NIGHT, OutcomeCounts.of_observations(observations(NIGHT, 40, 10)))
    assert again == first and again is not first


def test_other_decline_codes_do_not_leak_into_an_estimate() -> None:
    other = AttemptContext("do_not_honor", 2, 1, 1, 9)
    counts = OutcomeCounts.of_observations(observations(other, 900, 100))
    assert estimate(MORNING, counts) == estimate(MORNING, OutcomeCounts())


def test_an_unknown_code_uses_the_default_base_rate() -> None:
    context = AttemptContext("brand_new_code", 1, 1, 2, 13)
    expected = DEFAULT_PRIOR.default_base_rate * 1.1 * 1.0 * 1.0 * 1.05
    assert estimate(context, OutcomeCounts()).probability == pytest.approx(expected)


def test_context_from_times() -> None:
    first = datetime(2026, 3, 2, 22, 0, tzinfo=UTC)  # a Monday
    context = AttemptContext.at("x", 3, first, datetime(2026, 3, 5, 10, 30, tzinfo=UTC))
    assert (context.days_since_first_failure, context.weekday, context.hour) == (2, 3, 10)
    assert dict(context.features()) == {"attempt": "3", "days": "2-3", "weekday": "3", "hour": "10"}


contexts = st.builds(
    AttemptContext,
    st.sampled_from(["insufficient_funds", "do_not_honor", "gateway_unreachable", "other"]),
    st.integers(1, 12),
    st.integers(0, 30),
    st.integers(0, 6),
    st.integers(0, 23),
)


@given(st.lists(st.tuples(contexts, st.booleans()), max_size=60), contexts)
def test_an_estimate_is_always_a_probability(
    history: list[tuple[AttemptContext, bool]], context: AttemptContext
) -> None:
    counts = OutcomeCounts.of_observations(Observation(c, ok) for c, ok in history)
    found = estimate(context, counts)
    assert MIN_PROBABILITY <= found.probability <= MAX_PROBABILITY
    assert 0 <= found.basis_points <= 10_000


@given(contexts, st.integers(0, 200), st.integers(0, 200), st.integers(1, 50))
def test_more_successes_never_lower_the_estimate(
    context: AttemptContext, successes: int, failures: int, extra: int
) -> None:
    before = estimate(context, OutcomeCounts.of_observations(observations(context, successes, failures)))
    after = estimate(
        context, OutcomeCounts.of_observations(observations(context, successes + extra, failures))
    )
    assert after.probability >= before.probability - 1e-12
