"""The events the tier rules decide; adapters encode them as `tier.changed` messages."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from billing_common.tiers import Tier
from tier.domain.accounts import AccountKind
from tier.domain.estate import PlannedChange


@dataclass(frozen=True, slots=True)
class TierChanged:
    account_id: str
    kind: AccountKind
    previous_tier: Tier
    new_tier: Tier
    rule_id: str
    rule_set_version: str
    evidence_before: tuple[tuple[str, str], ...]
    evidence_after: tuple[tuple[str, str], ...]
    scan_id: str
    billed_account_id: str
    effective_at: datetime


def announced(written: Iterable[PlannedChange], scan_id: str, effective_at: datetime) -> list[TierChanged]:
    """The events of the changes that were written. An account's first tier is its starting point,
    not a move: it goes to the history only, so billing never reacts to an account being found."""
    return [
        TierChanged(
            account_id=change.account_id,
            kind=change.kind,
            previous_tier=change.previous.decision.tier,
            new_tier=change.decision.tier,
            rule_id=change.decision.rule_id,
            rule_set_version=change.decision.rule_set_version,
            evidence_before=change.previous.decision.evidence,
            evidence_after=change.decision.evidence,
            scan_id=scan_id,
            billed_account_id=change.billed_account_id,
            effective_at=effective_at,
        )
        for change in written
        if change.previous is not None
    ]
