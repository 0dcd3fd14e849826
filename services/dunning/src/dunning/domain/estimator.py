"""The chance that a retry succeeds, estimated from past outcomes with a prior.

The estimate for a decline code starts from a prior base rate (a Beta prior worth a fixed number
of pseudo-outcomes) and a prior "lift" per feature (attempt number, days since the first failure,
weekday, hour of day), likewise worth a fixed number of outcomes. Observed outcomes are added to
those pseudo-counts, so on the first day the prior decides alone, and as outcomes accumulate the
observed rates take over.
Features are combined as independent multipliers of the base rate (a naive-Bayes style model):
simple, explainable, and stable with little data.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

DIMENSIONS = ("attempt", "days", "weekday", "hour")
DAY = timedelta(days=1)
MIN_PROBABILITY = 0.001
MAX_PROBABILITY = 0.99


def _attempt_bucket(number: int) -> str:
    return str(number) if number < 4 else "4+"


def _days_bucket(days: int) -> str:
    if days <= 1:
        return str(max(days, 0))
    if days <= 3:
        return "2-3"
    if days <= 7:
        return "4-7"
    if days <= 14:
        return "8-14"
    return "15+"


def _context_key(
    decline_code: str, attempt_number: int, first_failed_at: datetime, when: datetime
) -> tuple[str, int, int, int, int]:
    utc = when.astimezone(UTC)
    days = max(0, (when - first_failed_at) // DAY)
    return decline_code, attempt_number, days, utc.weekday(), utc.hour


@dataclass(frozen=True)
class AttemptContext:
    """What is known about an attempt before it is made."""

    decline_code: str
    attempt_number: int
    days_since_first_failure: int
    weekday: int  # Monday is 0
    hour: int  # 0..23, UTC

    @classmethod
    def at(
        cls, decline_code: str, attempt_number: int, first_failed_at: datetime, when: datetime
    ) -> AttemptContext:
        return cls(*_context_key(decline_code, attempt_number, first_failed_at, when))

    def features(self) -> tuple[tuple[str, str], ...]:
        return (
            ("attempt", _attempt_bucket(self.attempt_number)),
            ("days", _days_bucket(self.days_since_first_failure)),
            ("weekday", str(self.weekday)),
            ("hour", str(self.hour)),
        )


@dataclass(frozen=True)
class Observation:
    """One past attempt and whether it recovered the payment: the estimator's training data."""

    context: AttemptContext
    succeeded: bool


@dataclass(frozen=True)
class Tally:
    attempts: int = 0
    successes: int = 0

    def plus(self, attempts: int, successes: int) -> Tally:
        return Tally(self.attempts + attempts, self.successes + successes)


@dataclass(frozen=True)
class OutcomeCounts:
    """Past outcomes per decline code, and per decline code and feature value.

    Counts are never changed once made, so the estimates made from them are kept with them: a
    schedule scores dozens of candidate hours per attempt, and the attempts between two reloads of
    the counts ask about the same few contexts again and again.
    """

    by_code: Mapping[str, Tally] = field(default_factory=dict)
    by_feature: Mapping[tuple[str, str, str], Tally] = field(default_factory=dict)
    # By the context's fields (a plain tuple hashes faster than the context) and the prior.
    _estimates: dict[tuple[str, int, int, int, int, Prior], Estimate] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    @property
    def total(self) -> int:
        return sum(t.attempts for t in self.by_code.values())

    @classmethod
    def of(cls, groups: Iterable[tuple[AttemptContext, int, int]]) -> OutcomeCounts:
        """Counts from (context, attempts, successes) groups, e.g. rows of a GROUP BY."""
        by_code: dict[str, Tally] = {}
        by_feature: dict[tuple[str, str, str], Tally] = {}
        for context, attempts, successes in groups:
            code = context.decline_code
            by_code[code] = by_code.get(code, Tally()).plus(attempts, successes)
            for dimension, value in context.features():
                key = (code, dimension, value)
                by_feature[key] = by_feature.get(key, Tally()).plus(attempts, successes)
        return cls(by_code, by_feature)

    @classmethod
    def of_observations(cls, observations: Iterable[Observation]) -> OutcomeCounts:
        return cls.of((o.context, 1, int(o.succeeded)) for o in observations)


@dataclass(frozen=True, eq=False)
class Prior:
    """What is believed before any outcome is seen, and how many outcomes that belief is worth.
    Equal and hashed by identity (its tables are mappings), as the key of remembered estimates."""

    base_rates: Mapping[str, float]
    default_base_rate: float
    lifts: Mapping[tuple[str, str], float]
    base_strength: float
    feature_strength: float

    def base_rate(self, decline_code: str) -> float:
        return self.base_rates.get(decline_code, self.default_base_rate)

    def lift(self, dimension: str, value: str) -> float:
        return self.lifts.get((dimension, value), 1.0)


def _hour_lift(hour: int) -> float:
    if hour < 6:
        return 0.85  # the small hours: balances are lowest before the day's deposits
    if hour < 12:
        return 1.1
    if hour < 18:
        return 1.05
    return 0.95


# Published retry studies agree on the broad shape: unreachable gateways recover most, insufficient
# funds recover after a few days, generic declines rarely; early attempts beat late ones.
DEFAULT_PRIOR = Prior(
    base_rates={
        "gateway_unreachable": 0.7,
        "processing_error": 0.5,
        "insufficient_funds": 0.3,
        "do_not_honor": 0.2,
        "generic_decline": 0.15,
        "unknown": 0.2,
    },
    default_base_rate=0.2,
    lifts={
        ("attempt", "1"): 1.1,
        ("attempt", "2"): 1.0,
        ("attempt", "3"): 0.9,
        ("attempt", "4+"): 0.8,
        ("days", "0"): 0.7,
        ("days", "1"): 1.0,
        ("days", "2-3"): 1.05,
        ("days", "4-7"): 1.0,
        ("days", "8-14"): 0.9,
        ("days", "15+"): 0.8,
        ("weekday", "5"): 0.95,
        ("weekday", "6"): 0.95,
        **{("hour", str(h)): _hour_lift(h) for h in range(24)},
    },
    base_strength=20.0,
    feature_strength=10.0,
)


@dataclass(frozen=True)
class Estimate:
    probability: float
    # How many past outcomes of this decline code the estimate rests on.
    sample_size: int

    @property
    def basis_points(self) -> int:
        return round(self.probability * 10_000)


def _clip(p: float) -> float:
    return min(MAX_PROBABILITY, max(MIN_PROBABILITY, p))


def estimate(context: AttemptContext, counts: OutcomeCounts, prior: Prior = DEFAULT_PRIOR) -> Estimate:
    """Beta-smoothed base rate of the decline code times a smoothed lift per feature (see `_score`),
    made once per context and prior for a given set of counts."""
    fields = (
        context.decline_code,
        context.attempt_number,
        context.days_since_first_failure,
        context.weekday,
        context.hour,
    )
    return _remembered(fields, counts, prior)


def estimate_at(
    decline_code: str,
    attempt_number: int,
    first_failed_at: datetime,
    when: datetime,
    counts: OutcomeCounts,
    prior: Prior = DEFAULT_PRIOR,
) -> Estimate:
    """`estimate` of the attempt at `when`, without building its context when it is remembered:
    a schedule asks this for dozens of candidate hours per attempt."""
    return _remembered(_context_key(decline_code, attempt_number, first_failed_at, when), counts, prior)


def _remembered(fields: tuple[str, int, int, int, int], counts: OutcomeCounts, prior: Prior) -> Estimate:
    key = (*fields, prior)
    found = counts._estimates.get(key)
    if found is None:
        found = counts._estimates[key] = _score(AttemptContext(*fields), counts, prior)
    return found


def _score(context: AttemptContext, counts: OutcomeCounts, prior: Prior) -> Estimate:
    """Beta-smoothed base rate of the decline code times a smoothed lift per feature.

    A feature's observed lift is its success rate over the code's overall rate; it is shrunk
    toward the prior lift with `feature_strength` pseudo-outcomes. Measuring lifts against the
    observed overall rate (not the smoothed one) keeps evidence from being counted twice, so
    with plenty of data the estimate converges on the observed rates.
    """
    code = context.decline_code
    seen = counts.by_code.get(code, Tally())
    k = prior.base_strength
    probability = (prior.base_rate(code) * k + seen.successes) / (k + seen.attempts)
    overall = seen.successes / seen.attempts if seen.attempts else 0.0
    k_feature = prior.feature_strength
    for dimension, value in context.features():
        tally = counts.by_feature.get((code, dimension, value), Tally())
        observed = (tally.successes / tally.attempts) / overall if tally.attempts and overall else 1.0
        lift = (prior.lift(dimension, value) * k_feature + observed * tally.attempts) / (
            k_feature + tally.attempts
        )
        probability *= lift
    return Estimate(_clip(probability), seen.attempts)
