"""Quota arithmetic: may `amount` more be used, and which thresholds a change crosses."""

from __future__ import annotations

from typing import NamedTuple

from quota.domain.catalog import Behaviour, Entitlement

REASON_OK = "ok"
REASON_OVER_LIMIT = "over_limit"
REASON_NOT_ENTITLED = "not_entitled"
REASON_DENIED = "subscription_not_active"


class CheckDecision(NamedTuple):
    """A tuple rather than a frozen dataclass: every check builds one, at a third of the cost."""

    allowed: bool
    used: int
    limit: int | None
    remaining: int | None  # None: unlimited
    behaviour: Behaviour
    reason: str
    warning: bool = False


def refused(used: int, reason: str) -> CheckDecision:
    return CheckDecision(False, used, 0, 0, Behaviour.DENY, reason)


def decide(entitlement: Entitlement, used: int, amount: int) -> CheckDecision:
    """The answer for using `amount` more when `used` is already counted in the window.

    DENY refuses what would go over the limit; WARN and ALLOW always allow, WARN with a
    warning once usage reaches the limit.
    """
    limit = entitlement.limit
    behaviour = entitlement.behaviour
    if limit is None:
        return CheckDecision(True, used, None, None, behaviour, REASON_OK)
    remaining = max(0, limit - used)
    after = used + amount
    if behaviour is Behaviour.DENY:
        allowed = after <= limit
        return CheckDecision(
            allowed, used, limit, remaining, behaviour, REASON_OK if allowed else REASON_OVER_LIMIT
        )
    warning = behaviour is Behaviour.WARN and after >= limit
    return CheckDecision(
        True, used, limit, remaining, behaviour, REASON_OVER_LIMIT if after > limit else REASON_OK, warning
    )


def after_counting(entitlement: Entitlement, used_after: int) -> CheckDecision:
    """The state reported once an event is counted (`used_after` includes it)."""
    limit = entitlement.limit
    if limit is None:
        return CheckDecision(True, used_after, None, None, entitlement.behaviour, REASON_OK)
    over = used_after > limit
    return CheckDecision(
        True,
        used_after,
        limit,
        max(0, limit - used_after),
        entitlement.behaviour,
        REASON_OVER_LIMIT if over else REASON_OK,
        entitlement.behaviour is Behaviour.WARN and used_after >= limit,
    )


def crossed_thresholds(percents: tuple[int, ...], limit: int | None, before: int, after: int) -> list[int]:
    """Thresholds (percent of `limit`) that usage moved across, upwards, from `before` to `after`."""
    if limit is None or limit <= 0:
        return []
    return [p for p in percents if before * 100 < p * limit <= after * 100]


def apply_delta(limit: int | None, behaviour: Behaviour, used: int, delta: int) -> tuple[bool, int]:
    """The reference model of the atomic check-and-add: (counted, used afterwards).

    Usage never goes below zero; under DENY it never goes above the limit.
    """
    after = used + delta
    if after < 0:
        return False, used
    if behaviour is Behaviour.DENY and limit is not None and delta > 0 and after > limit:
        return False, used
    return True, after
