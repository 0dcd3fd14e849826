"""The vocabulary of a dunning case: states, failures, attempts and the case itself."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from billing_common.money import Money
from billing_common.payments import DeclineKind, FailureType


class CaseState(StrEnum):
    OPEN = "open"
    RETRY_SCHEDULED = "retry_scheduled"
    ATTEMPTING = "attempting"
    AWAITING_PAYMENT_METHOD = "awaiting_payment_method"
    HELD = "held"
    RECOVERED = "recovered"
    EXHAUSTED = "exhausted"
    CLOSED = "closed"


TERMINAL_STATES = frozenset({CaseState.RECOVERED, CaseState.EXHAUSTED, CaseState.CLOSED})


class FailureRoute(StrEnum):
    """What a failure means for the case."""

    RETRY = "retry"
    AWAIT_PAYMENT_METHOD = "await_payment_method"
    HOLD = "hold"


@dataclass(frozen=True)
class Failure:
    type: FailureType
    kind: DeclineKind
    decline_code: str
    retryable: bool = True

    @property
    def route(self) -> FailureRoute:
        """Soft declines and unreachable gateways are retried; hard declines wait for a new method;
        merchant errors and unknown outcomes (a charge may have happened) wait for an operator."""
        if self.type in (FailureType.MERCHANT, FailureType.UNKNOWN_OUTCOME):
            return FailureRoute.HOLD
        if self.type is FailureType.GATEWAY_UNREACHABLE:
            return FailureRoute.RETRY
        if self.kind is DeclineKind.HARD:
            return FailureRoute.AWAIT_PAYMENT_METHOD
        if self.kind is DeclineKind.SOFT:
            return FailureRoute.RETRY
        return FailureRoute.RETRY if self.retryable else FailureRoute.AWAIT_PAYMENT_METHOD

    @property
    def statistics_code(self) -> str:
        """The code the estimator groups outcomes by."""
        if self.decline_code:
            return self.decline_code
        if self.type is FailureType.GATEWAY_UNREACHABLE:
            return "gateway_unreachable"
        return "unknown"


@dataclass(frozen=True)
class InvoiceRef:
    """What the case knows of its invoice (copied from recurring's event)."""

    invoice_id: str
    subscription_id: str
    account_id: str
    merchant_id: str
    amount_due: Money


class AttemptOutcome(StrEnum):
    SCHEDULED = "scheduled"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


@dataclass(frozen=True)
class Attempt:
    number: int
    scheduled_at: datetime
    # Why this time: the estimated chance of success and how many past outcomes it rests on.
    estimated_success_bp: int
    sample_size: int
    reason: str
    outcome: AttemptOutcome = AttemptOutcome.SCHEDULED
    decline_code: str = ""
    attempted_at: datetime | None = None

    @property
    def in_flight(self) -> bool:
        return self.outcome is AttemptOutcome.SCHEDULED and self.attempted_at is not None


@dataclass(frozen=True)
class Transition:
    from_state: CaseState
    to_state: CaseState
    cause: str
    at: datetime
    detail: str = ""


@dataclass(frozen=True)
class Case:
    case_id: str
    invoice: InvoiceRef
    state: CaseState
    failure: Failure
    first_failed_at: datetime
    opened_at: datetime
    attempts: tuple[Attempt, ...] = ()
    # When a worker must act: the next attempt, the end of an attempt's lease, or (while waiting
    # for a payment method) the end of the window. None when nothing is due.
    due_at: datetime | None = None
    reminder_at: datetime | None = None
    ended_at: datetime | None = None
    version: int = 0

    @property
    def current_attempt(self) -> Attempt | None:
        """The attempt that is scheduled or in flight, if any."""
        if self.attempts and self.attempts[-1].outcome is AttemptOutcome.SCHEDULED:
            return self.attempts[-1]
        return None

    @property
    def attempts_started(self) -> int:
        return sum(1 for a in self.attempts if a.attempted_at is not None)

    @property
    def next_number(self) -> int:
        return self.attempts[-1].number + 1 if self.attempts else 1

    @property
    def last_attempted_at(self) -> datetime | None:
        started = [a.attempted_at for a in self.attempts if a.attempted_at is not None]
        return max(started) if started else None

    @property
    def next_attempt_at(self) -> datetime | None:
        current = self.current_attempt
        return current.scheduled_at if current and self.state is CaseState.RETRY_SCHEDULED else None
