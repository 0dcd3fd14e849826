"""Gateway outages within a run: unreachable answers in a row, counted per run and gateway across
pods; at the threshold the gateway's part of the run halts until an operator resumes it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from recurring.domain.payments import Outcome
from recurring.domain.runs import WorkItem
from recurring.domain.settlement import Rules


@dataclass(frozen=True)
class OutageStep:
    """One change of a count: an unreachable answer adds one, any other answer resets it."""

    run_id: str
    gateway: str
    reachable: bool


def outage_steps(outcomes: Sequence[tuple[WorkItem, Outcome]]) -> list[OutageStep]:
    """What a batch's answers do to the counts, in order. An answer refused before routing names no
    gateway and says nothing of one's health; a run of answers that reached a gateway resets its
    count once."""
    steps: list[OutageStep] = []
    reset: set[tuple[str, str]] = set()
    for item, outcome in outcomes:
        if not item.gateway:
            continue
        key = (item.run_id, item.gateway)
        if outcome is not Outcome.DEFERRED:
            if key not in reset:
                steps.append(OutageStep(item.run_id, item.gateway, reachable=True))
                reset.add(key)
            continue
        reset.discard(key)
        steps.append(OutageStep(item.run_id, item.gateway, reachable=False))
    return steps


def halts(unreachable_in_a_row: int, rules: Rules) -> bool:
    """Whether the gateway's part of the run halts after this many unreachable answers in a row."""
    return unreachable_in_a_row >= rules.halt_threshold
