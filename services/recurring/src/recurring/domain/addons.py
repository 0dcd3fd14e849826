"""Add-ons on the invoice: each stretch in which the tenant held an add-on during the period whose
usage the invoice bills, at the part of the add-on's price that the stretch is of that period.

Rounding rule: proration's (by days, half-even). Holding an add-on of price P is treated as a plan
change from 0 to P on the day it was added and back to 0 on the day it was removed: with r_added and
r_removed the days of the n-day period remaining on those days, the stretch is billed
round_half_even(P * r_added / n) - round_half_even(P * r_removed / n). So
- a whole period is billed exactly P, and an add-on added mid-period is billed exactly what an
  upgrade by P on that day would be charged;
- each line is within one minor unit of its exact share P * (r_added - r_removed) / n;
- stretches of one period never sum to more than P: together they are billed what one stretch over
  the same days would be, so removing an add-on and adding it back costs no more than keeping it.
"""

from __future__ import annotations

from collections.abc import Sequence

from billing_common.money import Money
from recurring.domain.invoicing import AddOnUse
from recurring.domain.proration import net_change, remaining_days


def add_on_lines(uses: Sequence[AddOnUse]) -> list[tuple[str, Money]]:
    """One line (description, amount) per stretch held for at least a day, in the given order."""
    lines = []
    for use in uses:
        period, none = use.period, Money(0, use.price.currency)
        added, removed = use.held.start, max(use.held.start, use.held.end)
        days = remaining_days(period, added)[0] - remaining_days(period, removed)[0]
        if days == 0:
            continue
        amount = net_change(none, use.price, period, added) - net_change(none, use.price, period, removed)
        share = "" if days == period.days else f" ({days} of {period.days} days)"
        lines.append((f"Add-on: {use.name}{share}", amount))
    return lines
