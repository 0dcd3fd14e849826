from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from billing_common.money import CurrencyError, Money, parse_decimal, round_to_minor


def test_arithmetic_stays_in_one_currency() -> None:
    assert Money(1999, "USD") + Money(1, "USD") == Money(2000, "USD")
    assert Money(500, "EUR") - Money(750, "EUR") == Money(-250, "EUR")
    with pytest.raises(CurrencyError):
        _ = Money(1, "USD") + Money(1, "EUR")


def test_refuses_unknown_currency_and_non_integers() -> None:
    with pytest.raises(CurrencyError):
        Money(100, "XYZ")
    with pytest.raises(TypeError):
        Money(1.5, "USD")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        Money(True, "USD")


def test_minor_units_follow_iso_4217() -> None:
    assert Money(1999, "USD").to_decimal() == Decimal("19.99")
    assert Money(1999, "JPY").to_decimal() == Decimal("1999")
    assert Money(1999, "KWD").to_decimal() == Decimal("1.999")


def test_rounding_is_half_to_even() -> None:
    assert round_to_minor(Decimal("0.125"), "USD") == Money(12, "USD")
    assert round_to_minor(Decimal("0.135"), "USD") == Money(14, "USD")
    assert round_to_minor(Decimal("0.0025") * 1000, "USD") == Money(250, "USD")


def test_parse_decimal_refuses_non_numbers() -> None:
    assert parse_decimal("0.0025") == Decimal("0.0025")
    for bad in ("abc", "NaN", "Infinity"):
        with pytest.raises(ValueError):
            parse_decimal(bad)


@given(st.integers(min_value=-(10**15), max_value=10**15), st.sampled_from(["USD", "JPY", "KWD", "CLF"]))
def test_decimal_round_trip_is_exact(amount: int, currency: str) -> None:
    money = Money(amount, currency)
    assert round_to_minor(money.to_decimal(), currency) == money


@given(st.lists(st.integers(min_value=-(10**9), max_value=10**9), max_size=50))
def test_sum_is_exact(amounts: list[int]) -> None:
    total = Money.zero("USD")
    for amount in amounts:
        total = total + Money(amount, "USD")
    assert total.amount_minor == sum(amounts)
