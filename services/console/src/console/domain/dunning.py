"""Dunning read for people: one case's timeline, the backlog, and how much is recovered."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

# Cases still being worked on, in the order of the case's life.
BACKLOG_STATES = ("OPEN", "RETRY_SCHEDULED", "ATTEMPTING", "AWAITING_PAYMENT_METHOD", "HELD")
# The state a case is in while an attempt runs.
STARTED = "ATTEMPTING"
ALL_STATES = (*BACKLOG_STATES, "RECOVERED", "EXHAUSTED", "CLOSED")
# What an operator may do in each state (the service has the last word).
ACTIONS_BY_STATE = {
    "OPEN": ("pause", "retry"),
    "RETRY_SCHEDULED": ("pause", "retry"),
    "ATTEMPTING": ("reset",),
    "AWAITING_PAYMENT_METHOD": ("pause", "retry"),
    "HELD": ("resume", "retry"),
}


@dataclass(frozen=True)
class TimelineEntry:
    at: datetime
    kind: str  # "transition" or "attempt"
    title: str
    detail: str
    # For attempts: the estimate that chose the time, in basis points, and its sample size.
    estimated_success_bp: int | None = None
    sample_size: int | None = None


def _attempt_entry(attempt: Mapping[str, Any]) -> TimelineEntry:
    outcome = str(attempt.get("outcome", "")).lower()
    decline = attempt.get("decline_code", "")
    at = attempt.get("attempted_at") or attempt["scheduled_at"]
    return TimelineEntry(
        at=at,
        kind="attempt",
        title=f"Attempt {attempt['number']}: {outcome}" + (f" ({decline})" if decline else ""),
        detail=attempt.get("reason", ""),
        estimated_success_bp=attempt.get("estimated_success_bp", 0),
        sample_size=attempt.get("sample_size", 0),
    )


def timeline(case: Mapping[str, Any]) -> list[TimelineEntry]:
    """Transitions and attempts in the order they happened (an attempt at its time, or when due)."""
    entries = [
        TimelineEntry(
            at=t["at"],
            kind="transition",
            title=f"{str(t['from_state']).lower()} → {str(t['to_state']).lower()}",
            detail=t.get("cause", ""),
        )
        for t in case.get("history", ())
    ]
    entries += [_attempt_entry(a) for a in case.get("attempts", ())]
    return sorted(entries, key=lambda e: (e.at, _order_within_an_instant(e)))


def _order_within_an_instant(entry: TimelineEntry) -> int:
    """At one instant (the suite's test clock stands still while a day's work runs) an attempt
    comes after the transition that started it and before the one its outcome caused."""
    if entry.kind == "attempt":
        return 1
    return 2 if entry.title.startswith(f"{STARTED.lower()} →") else 0


def backlog(cases: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    counts = Counter(str(c.get("state", "")) for c in cases)
    return {state: counts.get(state, 0) for state in BACKLOG_STATES}


def recovery_rate(cases: Iterable[Mapping[str, Any]]) -> float | None:
    """Recovered among the cases that ended by recovery or exhaustion; None before any did."""
    counts = Counter(str(c.get("state", "")) for c in cases)
    ended = counts["RECOVERED"] + counts["EXHAUSTED"]
    return counts["RECOVERED"] / ended if ended else None


def recovery_by_day(cases: Iterable[Mapping[str, Any]]) -> list[tuple[date, float]]:
    """The recovery rate of the cases opened each day (days where some case has ended)."""
    by_day: dict[date, list[Mapping[str, Any]]] = defaultdict(list)
    for case in cases:
        opened = case.get("opened_at")
        if opened is not None:
            by_day[opened.date()].append(case)
    rates = [(day, recovery_rate(found)) for day, found in sorted(by_day.items())]
    return [(day, rate) for day, rate in rates if rate is not None]
