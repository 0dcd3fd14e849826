from decimal import Decimal

from hypothesis import given
from hypothesis import strategies as st

from billing_common.money import Money
from quota.domain.catalog import Behaviour, Entitlement, Period
from quota.domain.pricing import price_usage
from quota.domain.quota import REASON_OVER_LIMIT, apply_delta, crossed_thresholds, decide


def entitlement(limit: int | None, behaviour: Behaviour) -> Entitlement:
    return Entitlement("api.calls", limit, Period.CALENDAR_MONTH, behaviour)


def test_deny_refuses_what_would_go_over_and_reports_what_is_left() -> None:
    decision = decide(entitlement(10, Behaviour.DENY), used=8, amount=3)
    assert (decision.allowed, decision.remaining, decision.reason) == (False, 2, REASON_OVER_LIMIT)
    assert decide(entitlement(10, Behaviour.DENY), used=8, amount=2).allowed


def test_warn_allows_and_warns_at_the_limit_allow_just_allows() -> None:
    warn = decide(entitlement(10, Behaviour.WARN), used=8, amount=2)
    assert warn.allowed and warn.warning
    assert not decide(entitlement(10, Behaviour.WARN), used=7, amount=2).warning
    allow = decide(entitlement(10, Behaviour.ALLOW), used=50, amount=5)
    assert allow.allowed and not allow.warning and allow.remaining == 0


def test_unlimited_is_always_allowed() -> None:
    decision = decide(entitlement(None, Behaviour.DENY), used=10**12, amount=10**6)
    assert decision.allowed and decision.remaining is None


@given(
    st.integers(min_value=0, max_value=1000),
    st.lists(st.integers(min_value=-50, max_value=200), max_size=200),
)
def test_under_deny_usage_never_exceeds_the_limit_nor_goes_negative(limit: int, deltas: list[int]) -> None:
    used = 0
    for delta in deltas:
        counted, after = apply_delta(limit, Behaviour.DENY, used, delta)
        # What the check promised is what the add does.
        if delta > 0:
            assert counted == decide(entitlement(limit, Behaviour.DENY), used, delta).allowed
        used = after
        assert 0 <= used <= limit


@given(st.lists(st.integers(min_value=1, max_value=100), max_size=100))
def test_warn_and_allow_count_everything(deltas: list[int]) -> None:
    for behaviour in (Behaviour.WARN, Behaviour.ALLOW):
        used = 0
        for delta in deltas:
            counted, used = apply_delta(5, behaviour, used, delta)
            assert counted
        assert used == sum(deltas)


@given(
    st.integers(min_value=1, max_value=10_000),
    st.lists(st.integers(min_value=1, max_value=500), min_size=1, max_size=80),
)
def test_each_threshold_is_crossed_exactly_once_on_the_way_up(limit: int, deltas: list[int]) -> None:
    percents = (50, 80, 100, 150)
    used, crossings = 0, []
    for delta in deltas:
        crossings += crossed_thresholds(percents, limit, used, used + delta)
        used += delta
    assert sorted(crossings) == [p for p in percents if p * limit <= used * 100]


def test_usage_is_priced_beyond_the_included_quantity_half_even() -> None:
    charge = price_usage(1250, 1000, Decimal("0.0025"), "USD")  # 250 x 0.0025 = 0.625 USD
    assert charge.billable_quantity == 250
    assert charge.amount == Money(62, "USD")  # 62.5 cents rounds to even
    assert price_usage(900, 1000, Decimal("0.01"), "USD").amount == Money(0, "USD")
    assert price_usage(3, 0, Decimal("0.5"), "JPY").amount == Money(2, "JPY")  # 1.5 -> 2


@given(
    st.integers(min_value=0, max_value=10**12),
    st.integers(min_value=0, max_value=10**12),
    st.decimals(min_value=0, max_value=1000, places=6, allow_nan=False, allow_infinity=False),
)
def test_pricing_is_exact_until_the_final_rounding(quantity: int, included: int, price: Decimal) -> None:
    charge = price_usage(quantity, included, price, "USD")
    exact_cents = Decimal(max(0, quantity - included)) * price * 100
    assert abs(Decimal(charge.amount.amount_minor) - exact_cents) <= Decimal("0.5")
    assert charge.billable_quantity == max(0, quantity - included)
