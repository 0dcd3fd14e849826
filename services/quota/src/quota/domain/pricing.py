"""Usage pricing: the quantity beyond what the plan includes, at an exact decimal unit price."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal, Inexact, localcontext

from billing_common.money import Money, round_to_minor


@dataclass(frozen=True)
class UsageCharge:
    quantity: int
    included_quantity: int
    billable_quantity: int
    unit_price: Decimal | None
    amount: Money


def price_usage(quantity: int, included: int, unit_price: Decimal | None, currency: str) -> UsageCharge:
    """billable = max(0, quantity - included); amount = billable x unit price, half-even to minor units.

    The product is computed exactly (a wide context that traps any inexact step), so only the
    final rounding to minor units ever rounds.
    """
    billable = max(0, quantity - included)
    if unit_price is None or billable == 0:
        return UsageCharge(quantity, included, billable, unit_price, Money.zero(currency))
    with localcontext() as ctx:
        ctx.prec = 80
        ctx.traps[Inexact] = True
        exact = Decimal(billable) * unit_price
        ctx.traps[Inexact] = False
        amount = round_to_minor(exact, currency)
    return UsageCharge(quantity, included, billable, unit_price, amount)
