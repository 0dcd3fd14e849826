"""Tier changes read for people: an account's timeline, the answer to "when and why did X become
Pro", the list for review with its filters, and how many accounts sit in each tier."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

TIERS = ("LITE", "PLUS", "PRO")


@dataclass(frozen=True)
class EvidenceChange:
    name: str
    before: str
    after: str


@dataclass(frozen=True)
class TierStep:
    change_id: str
    account_id: str
    effective_at: datetime
    previous_tier: str  # "" for the account's first tier
    new_tier: str
    rule_id: str
    rule_set_version: str
    evidence: tuple[EvidenceChange, ...]  # what the rule saw, with what changed first
    trigger: str  # the scan, or the RPC that caused it

    @property
    def sentence(self) -> str:
        became = f"became {self.new_tier.title()}"
        were = f" (was {self.previous_tier.title()})" if self.previous_tier else ""
        return f"{self.account_id} {became}{were} by rule {self.rule_id}"


def tier_name(value: Any) -> str:
    return "" if value in (None, "", "UNSPECIFIED") else str(value)


def _evidence(change: Mapping[str, Any]) -> tuple[EvidenceChange, ...]:
    before = {e["name"]: e["value"] for e in change.get("evidence_before", ())}
    after = {e["name"]: e["value"] for e in change.get("evidence_after", ())}
    rows = [
        EvidenceChange(name, before.get(name, ""), after.get(name, ""))
        for name in sorted(set(before) | set(after))
    ]
    # What moved first: it is usually why the rule fired.
    return tuple(sorted(rows, key=lambda row: row.before == row.after))


def step(change: Mapping[str, Any]) -> TierStep:
    scan = change.get("scan_id", "")
    return TierStep(
        change_id=change.get("change_id", ""),
        account_id=change.get("account_id", ""),
        effective_at=change["effective_at"],
        previous_tier=tier_name(change.get("previous_tier")),
        new_tier=tier_name(change.get("new_tier")),
        rule_id=change.get("rule_id", ""),
        rule_set_version=change.get("rule_set_version", ""),
        evidence=_evidence(change),
        trigger=f"scan {scan}" if scan else change.get("cause", ""),
    )


def timeline(changes: Iterable[Mapping[str, Any]]) -> list[TierStep]:
    """Oldest first: the story of how the account reached its tier."""
    return sorted((step(c) for c in changes), key=lambda s: s.effective_at)


def when_became(steps: Iterable[TierStep], tier: str) -> TierStep | None:
    """The change that last moved the account into `tier`, if it is in that tier now."""
    ordered = sorted(steps, key=lambda s: s.effective_at)
    if not ordered or ordered[-1].new_tier != tier:
        return None
    entered = None
    for s in ordered:
        if s.new_tier == tier and s.previous_tier != tier:
            entered = s
    return entered


@dataclass(frozen=True)
class ReviewFilter:
    since: date | None = None
    until: date | None = None  # inclusive
    rule_id: str = ""
    tier: str = ""  # the tier moved into

    def admits(self, s: TierStep) -> bool:
        day = s.effective_at.date()
        return (
            (self.since is None or day >= self.since)
            and (self.until is None or day <= self.until)
            and (not self.rule_id or s.rule_id == self.rule_id)
            and (not self.tier or s.new_tier == self.tier)
        )


def for_review(changes: Iterable[Mapping[str, Any]], where: ReviewFilter) -> list[TierStep]:
    """Newest first, the way a reviewer works through them."""
    chosen = [s for s in map(step, changes) if where.admits(s)]
    return sorted(chosen, key=lambda s: s.effective_at, reverse=True)


def distribution(changes: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """Accounts per tier, each counted in the tier of its latest change."""
    latest: dict[str, TierStep] = {}
    for s in map(step, changes):
        if s.account_id not in latest or s.effective_at >= latest[s.account_id].effective_at:
            latest[s.account_id] = s
    counts = Counter(s.new_tier for s in latest.values())
    return {tier: counts.get(tier, 0) for tier in TIERS}
