"""The transition table, as data: which state may follow which, and for what causes."""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum

from billing_common.errors import FailedPrecondition
from dunning.domain.model import CaseState


class TransitionCause(StrEnum):
    PAYMENT_FAILED = "payment_failed"
    ATTEMPT_STARTED = "attempt_started"
    ATTEMPT_SUCCEEDED = "attempt_succeeded"
    ATTEMPT_FAILED = "attempt_failed"
    ATTEMPT_HARD_DECLINE = "attempt_hard_decline"
    ATTEMPT_MERCHANT_FAILURE = "attempt_merchant_failure"
    ATTEMPT_REFUSED = "attempt_refused"
    ATTEMPTS_EXHAUSTED = "attempts_exhausted"
    WINDOW_ELAPSED = "window_elapsed"
    INVOICE_PAID = "invoice_paid"
    INVOICE_PAID_ELSEWHERE = "invoice_paid_elsewhere"
    INVOICE_VOIDED = "invoice_voided"
    PAYMENT_METHOD_UPDATED = "payment_method_updated"
    OPERATOR_PAUSE = "operator_pause"
    OPERATOR_RESUME = "operator_resume"
    OPERATOR_RETRY_NOW = "operator_retry_now"
    OPERATOR_RESET = "operator_reset"


S = CaseState
C = TransitionCause

TRANSITIONS: Mapping[tuple[CaseState, CaseState], frozenset[TransitionCause]] = {
    (S.OPEN, S.RETRY_SCHEDULED): frozenset({C.PAYMENT_FAILED}),
    (S.OPEN, S.AWAITING_PAYMENT_METHOD): frozenset({C.PAYMENT_FAILED}),
    (S.OPEN, S.HELD): frozenset({C.PAYMENT_FAILED}),
    (S.OPEN, S.EXHAUSTED): frozenset({C.ATTEMPTS_EXHAUSTED}),
    (S.RETRY_SCHEDULED, S.ATTEMPTING): frozenset({C.ATTEMPT_STARTED}),
    (S.RETRY_SCHEDULED, S.RETRY_SCHEDULED): frozenset({C.OPERATOR_RETRY_NOW}),
    (S.RETRY_SCHEDULED, S.HELD): frozenset({C.OPERATOR_PAUSE}),
    (S.RETRY_SCHEDULED, S.CLOSED): frozenset({C.INVOICE_PAID_ELSEWHERE, C.INVOICE_VOIDED}),
    (S.ATTEMPTING, S.RETRY_SCHEDULED): frozenset({C.ATTEMPT_FAILED, C.OPERATOR_RESET}),
    (S.ATTEMPTING, S.RECOVERED): frozenset({C.ATTEMPT_SUCCEEDED, C.INVOICE_PAID}),
    (S.ATTEMPTING, S.EXHAUSTED): frozenset({C.ATTEMPTS_EXHAUSTED}),
    (S.ATTEMPTING, S.AWAITING_PAYMENT_METHOD): frozenset({C.ATTEMPT_HARD_DECLINE}),
    (S.ATTEMPTING, S.HELD): frozenset({C.ATTEMPT_MERCHANT_FAILURE, C.ATTEMPT_REFUSED, C.OPERATOR_PAUSE}),
    (S.ATTEMPTING, S.CLOSED): frozenset({C.INVOICE_VOIDED}),
    (S.AWAITING_PAYMENT_METHOD, S.RETRY_SCHEDULED): frozenset(
        {C.PAYMENT_METHOD_UPDATED, C.OPERATOR_RETRY_NOW}
    ),
    (S.AWAITING_PAYMENT_METHOD, S.HELD): frozenset({C.OPERATOR_PAUSE}),
    (S.AWAITING_PAYMENT_METHOD, S.EXHAUSTED): frozenset({C.WINDOW_ELAPSED}),
    (S.AWAITING_PAYMENT_METHOD, S.CLOSED): frozenset({C.INVOICE_PAID_ELSEWHERE, C.INVOICE_VOIDED}),
    (S.HELD, S.RETRY_SCHEDULED): frozenset({C.OPERATOR_RESUME, C.OPERATOR_RETRY_NOW}),
    (S.HELD, S.AWAITING_PAYMENT_METHOD): frozenset({C.OPERATOR_RESUME}),
    (S.HELD, S.EXHAUSTED): frozenset({C.ATTEMPTS_EXHAUSTED}),
    # Paid while held: recovered if an attempt of ours was in flight when it was paused.
    (S.HELD, S.RECOVERED): frozenset({C.INVOICE_PAID}),
    (S.HELD, S.CLOSED): frozenset({C.INVOICE_PAID_ELSEWHERE, C.INVOICE_VOIDED}),
}


class IllegalTransition(FailedPrecondition):
    """A transition the table does not allow; nothing changes."""

    def __init__(self, from_state: CaseState, to_state: CaseState, cause: TransitionCause) -> None:
        super().__init__(
            f"a case in {from_state.name} cannot move to {to_state.name} on {cause.value}",
            details={"from_state": from_state.value, "to_state": to_state.value, "cause": cause.value},
        )
        self.from_state = from_state
        self.to_state = to_state
        self.cause = cause


def is_allowed(from_state: CaseState, to_state: CaseState, cause: TransitionCause) -> bool:
    return cause in TRANSITIONS.get((from_state, to_state), frozenset())


def check(from_state: CaseState, to_state: CaseState, cause: TransitionCause) -> None:
    if not is_allowed(from_state, to_state, cause):
        raise IllegalTransition(from_state, to_state, cause)
