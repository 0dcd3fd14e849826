"""Roll-up: an end user's tier is the highest tier of its active databases, a distributor's the highest
of its active end users. An account with nothing active under it is LITE (the lowest tier).

The highest tier is the one the customer actually uses somewhere; billing a lower one would give
the capability away. The evidence is the composition: how many children sit at each tier.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import lru_cache

from billing_common.tiers import Tier
from tier.domain.rules import TierDecision

ROLLUP_RULE = "rollup-highest"


def roll_up(children: Iterable[Tier], rule_set_version: str) -> TierDecision:
    counts = [0, 0, 0]
    for tier in children:
        counts[tier.rank - 1] += 1
    return roll_up_counts(counts[0], counts[1], counts[2], rule_set_version)


@lru_cache(maxsize=65_536)
def roll_up_counts(lite: int, plus: int, pro: int, rule_set_version: str) -> TierDecision:
    """The roll-up of children counted by tier; equal compositions share one decision."""
    tier = Tier.PRO if pro else Tier.PLUS if plus else Tier.LITE
    evidence = (
        ("children", str(lite + plus + pro)),
        ("children_lite", str(lite)),
        ("children_plus", str(plus)),
        ("children_pro", str(pro)),
    )
    return TierDecision(tier, ROLLUP_RULE, rule_set_version, evidence)
