"""A billing tier, in the words every service reads it in: tier decides an account's tier, quota maps
tiers to plans and recurring moves tier-mapped subscriptions (the contract's `Tier` is matched by name
in billing_common.protos)."""

from __future__ import annotations

from enum import StrEnum
from typing import Final


class Tier(StrEnum):
    """Tiers are ordered by their explicit `rank` (LITE < PLUS < PRO), never by their text: "a higher
    tier" is a comparison of ranks, and a tier compared with plain text is a TypeError."""

    LITE = "lite"
    PLUS = "plus"
    PRO = "pro"

    @property
    def rank(self) -> int:
        """1 for the lowest tier, one more for each tier above it."""
        return _RANKS[self]

    def __lt__(self, other: str) -> bool:
        return self.rank < _rank(other)

    def __le__(self, other: str) -> bool:
        return self.rank <= _rank(other)

    def __gt__(self, other: str) -> bool:
        return self.rank > _rank(other)

    def __ge__(self, other: str) -> bool:
        return self.rank >= _rank(other)


def _rank(other: str) -> int:
    if isinstance(other, Tier):
        return other.rank
    raise TypeError(f"a tier is ordered among tiers only, not against {type(other).__name__}")


_RANKS: Final = {Tier.LITE: 1, Tier.PLUS: 2, Tier.PRO: 3}
