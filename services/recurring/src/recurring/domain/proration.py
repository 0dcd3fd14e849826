"""Proration of a price change in the middle of a billing period, by days, exact to the minor unit.

Rounding rule: with r remaining days of a period of n days,
- the net change is round_half_even((new - old) * r / n): what the customer owes for the rest of
  the period at the new price minus what they already paid for it at the old one;
- the credit line is -round_half_even(old * r / n) (the unused part of the old price);
- the charge line is net - credit, so the two lines always sum exactly to the net change. The
  charge line differs from its own exact value new * r / n by at most one minor unit.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from fractions import Fraction

from billing_common.money import Money
from recurring.domain.schedule import Period


@dataclass(frozen=True)
class ProrationLine:
    description: str
    amount: Money


def round_half_even(value: Fraction) -> int:
    return round(value)  # Fraction rounds halves to even


def net_change(old: Money, new: Money, period: Period, change_day: date) -> Money:
    remaining, total = remaining_days(period, change_day)
    exact = Fraction((new - old).amount_minor * remaining, total)
    return Money(round_half_even(exact), old.currency)


def prorate(old: Money, new: Money, period: Period, change_day: date) -> list[ProrationLine]:
    """Credit for the unused old price and charge at the new price for the rest of `period`.

    Empty when nothing remains of the period or the price does not change.
    """
    if old.currency != new.currency:
        raise ValueError("a plan change cannot change the currency")
    remaining, total = remaining_days(period, change_day)
    if remaining == 0 or old == new:
        return []
    credit = -round_half_even(Fraction(old.amount_minor * remaining, total))
    net = net_change(old, new, period, change_day).amount_minor
    charge = net - credit
    days = f"{remaining} of {total} days"
    return [
        ProrationLine(f"Unused time at the old price ({days})", Money(credit, old.currency)),
        ProrationLine(f"Remaining time at the new price ({days})", Money(charge, new.currency)),
    ]


def remaining_days(period: Period, change_day: date) -> tuple[int, int]:
    """Days of `period` left from `change_day` on (the change day counts as left), and its length."""
    total = period.days
    if total <= 0:
        raise ValueError("a billing period has at least one day")
    clamped = min(max(change_day, period.start), period.end)
    return (period.end - clamped).days, total
