"""Add-on lines: prorated by the days held, exact to the minor unit, never more than the price."""

from __future__ import annotations

import itertools
from datetime import date, timedelta
from fractions import Fraction

from hypothesis import given
from hypothesis import strategies as st

from billing_common.money import Money
from recurring.domain.addons import add_on_lines
from recurring.domain.invoicing import AddOnUse
from recurring.domain.proration import prorate
from recurring.domain.schedule import Period

NOVEMBER = Period(date(2026, 11, 1), date(2026, 12, 1))
PRICES = st.integers(0, 10_000_000)
DAYS = st.integers(1, 366)
STARTS = st.dates(min_value=date(2000, 1, 1), max_value=date(2100, 1, 1))


def usd(minor: int) -> Money:
    return Money(minor, "USD")


def held(price: int, period: Period, first: int, last: int) -> AddOnUse:
    """Held from day `first` of the period (counted from 0) until day `last` (not held that day)."""
    days = Period(period.start + timedelta(days=first), period.start + timedelta(days=last))
    return AddOnUse("sso", "SSO", usd(price), period, days)


def amounts(uses: list[AddOnUse]) -> list[int]:
    return [amount.amount_minor for _, amount in add_on_lines(uses)]


def test_an_add_on_held_all_month_is_one_line_of_its_price() -> None:
    assert add_on_lines([held(3000, NOVEMBER, 0, 30)]) == [("Add-on: SSO", usd(3000))]


def test_an_add_on_added_on_the_twentieth_is_billed_its_eleven_days() -> None:
    # 3000 x 11 / 30 = 1100
    assert add_on_lines([held(3000, NOVEMBER, 19, 30)]) == [("Add-on: SSO (11 of 30 days)", usd(1100))]


def test_an_add_on_removed_the_day_it_was_added_is_not_billed() -> None:
    assert add_on_lines([held(3000, NOVEMBER, 9, 9)]) == []


def test_a_stretch_beyond_the_period_is_billed_only_for_its_days_inside() -> None:
    assert amounts([held(3000, NOVEMBER, -10, 45)]) == [3000]
    assert amounts([held(3000, NOVEMBER, 31, 45), held(3000, NOVEMBER, -10, -1)]) == []


def test_thirds_round_half_even_and_still_sum_to_the_price() -> None:
    period = Period(date(2026, 1, 1), date(2026, 1, 4))  # 3 days: 1000 / 3 = 333.33 each
    assert amounts([held(1000, period, n, n + 1) for n in range(3)]) == [333, 334, 333]


@given(PRICES, STARTS, DAYS, st.integers(-5, 370), st.integers(-5, 370))
def test_a_line_never_exceeds_the_price_and_is_within_one_minor_unit_of_its_exact_share(
    price: int, start: date, length: int, first: int, last: int
) -> None:
    period = Period(start, start + timedelta(days=length))
    lines = amounts([held(price, period, first, last)])
    days = max(0, min(last, length) - max(first, 0))
    if days == 0:
        assert lines == []
        return
    (amount,) = lines
    assert 0 <= amount <= price
    assert abs(Fraction(amount) - Fraction(price * days, length)) <= 1


@given(PRICES, STARTS, DAYS)
def test_an_add_on_held_the_whole_period_is_billed_exactly_its_price(
    price: int, start: date, length: int
) -> None:
    period = Period(start, start + timedelta(days=length))
    assert amounts([held(price, period, 0, length)]) == [price]


@given(PRICES, STARTS, DAYS, st.lists(st.integers(0, 366), max_size=8))
def test_stretches_of_one_period_sum_to_at_most_the_price_within_one_unit_each(
    price: int, start: date, length: int, cuts: list[int]
) -> None:
    """The period cut into stretches, every other one held (removed and added back in between)."""
    period = Period(start, start + timedelta(days=length))
    bounds = sorted({0, length, *(c for c in cuts if c < length)})
    stretches = list(itertools.pairwise(bounds))
    every = amounts([held(price, period, a, b) for a, b in stretches])
    assert sum(every) == price  # held throughout, however it is cut: exactly the price
    alternate = stretches[::2]
    some = amounts([held(price, period, a, b) for a, b in alternate])
    exact = Fraction(price * sum(b - a for a, b in alternate), length)
    assert sum(some) <= price
    assert abs(sum(some) - exact) <= len(alternate)


@given(PRICES, STARTS, DAYS, st.integers(0, 366))
def test_an_add_on_added_mid_period_costs_what_an_upgrade_by_its_price_would(
    price: int, start: date, length: int, day: int
) -> None:
    period = Period(start, start + timedelta(days=length))
    added = min(day, length - 1)
    upgrade = prorate(usd(0), usd(price), period, period.start + timedelta(days=added))
    charged = sum(line.amount.amount_minor for line in upgrade)
    assert amounts([held(price, period, added, length)]) == [charged]
