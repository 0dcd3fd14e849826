"""The transition table: every legal transition is accepted, every other one refused."""

import itertools

import pytest

from dunning.domain.model import TERMINAL_STATES, CaseState
from dunning.domain.transitions import TRANSITIONS, IllegalTransition, TransitionCause, check, is_allowed

S = CaseState
C = TransitionCause

# The table written out again by hand: a change to the domain table must be a deliberate change here.
EXPECTED = {
    (S.OPEN, S.RETRY_SCHEDULED, C.PAYMENT_FAILED),
    (S.OPEN, S.AWAITING_PAYMENT_METHOD, C.PAYMENT_FAILED),
    (S.OPEN, S.HELD, C.PAYMENT_FAILED),
    (S.OPEN, S.EXHAUSTED, C.ATTEMPTS_EXHAUSTED),
    (S.RETRY_SCHEDULED, S.ATTEMPTING, C.ATTEMPT_STARTED),
    (S.RETRY_SCHEDULED, S.RETRY_SCHEDULED, C.OPERATOR_RETRY_NOW),
    (S.RETRY_SCHEDULED, S.HELD, C.OPERATOR_PAUSE),
    (S.RETRY_SCHEDULED, S.CLOSED, C.INVOICE_PAID_ELSEWHERE),
    (S.RETRY_SCHEDULED, S.CLOSED, C.INVOICE_VOIDED),
    (S.ATTEMPTING, S.RETRY_SCHEDULED, C.ATTEMPT_FAILED),
    (S.ATTEMPTING, S.RETRY_SCHEDULED, C.OPERATOR_RESET),
    (S.ATTEMPTING, S.RECOVERED, C.ATTEMPT_SUCCEEDED),
    (S.ATTEMPTING, S.RECOVERED, C.INVOICE_PAID),
    (S.ATTEMPTING, S.EXHAUSTED, C.ATTEMPTS_EXHAUSTED),
    (S.ATTEMPTING, S.AWAITING_PAYMENT_METHOD, C.ATTEMPT_HARD_DECLINE),
    (S.ATTEMPTING, S.HELD, C.ATTEMPT_MERCHANT_FAILURE),
    (S.ATTEMPTING, S.HELD, C.ATTEMPT_REFUSED),
    (S.ATTEMPTING, S.HELD, C.OPERATOR_PAUSE),
    (S.ATTEMPTING, S.CLOSED, C.INVOICE_VOIDED),
    (S.AWAITING_PAYMENT_METHOD, S.RETRY_SCHEDULED, C.PAYMENT_METHOD_UPDATED),
    (S.AWAITING_PAYMENT_METHOD, S.RETRY_SCHEDULED, C.OPERATOR_RETRY_NOW),
    (S.AWAITING_PAYMENT_METHOD, S.HELD, C.OPERATOR_PAUSE),
    (S.AWAITING_PAYMENT_METHOD, S.EXHAUSTED, C.WINDOW_ELAPSED),
    (S.AWAITING_PAYMENT_METHOD, S.CLOSED, C.INVOICE_PAID_ELSEWHERE),
    (S.AWAITING_PAYMENT_METHOD, S.CLOSED, C.INVOICE_VOIDED),
    (S.HELD, S.RETRY_SCHEDULED, C.OPERATOR_RESUME),
    (S.HELD, S.RETRY_SCHEDULED, C.OPERATOR_RETRY_NOW),
    (S.HELD, S.AWAITING_PAYMENT_METHOD, C.OPERATOR_RESUME),
    (S.HELD, S.EXHAUSTED, C.ATTEMPTS_EXHAUSTED),
    (S.HELD, S.RECOVERED, C.INVOICE_PAID),
    (S.HELD, S.CLOSED, C.INVOICE_PAID_ELSEWHERE),
    (S.HELD, S.CLOSED, C.INVOICE_VOIDED),
}
EVERY = list(itertools.product(CaseState, CaseState, TransitionCause))


def test_the_table_is_exactly_the_documented_one() -> None:
    table = {(a, b, cause) for (a, b), causes in TRANSITIONS.items() for cause in causes}
    assert table == EXPECTED


@pytest.mark.parametrize(("from_state", "to_state", "cause"), sorted(EXPECTED))
def test_legal_transitions_are_accepted(
    from_state: CaseState, to_state: CaseState, cause: TransitionCause
) -> None:
    assert is_allowed(from_state, to_state, cause)
    check(from_state, to_state, cause)


def test_every_other_transition_is_refused() -> None:
    illegal = [t for t in EVERY if t not in EXPECTED]
    assert len(illegal) == len(EVERY) - len(EXPECTED)
    for from_state, to_state, cause in illegal:
        assert not is_allowed(from_state, to_state, cause)
        with pytest.raises(IllegalTransition) as refused:
            check(from_state, to_state, cause)
        assert (refused.value.from_state, refused.value.to_state) == (from_state, to_state)


def test_finished_cases_never_move_again() -> None:
    for (from_state, _), _causes in TRANSITIONS.items():
        assert from_state not in TERMINAL_STATES


def test_every_state_is_reachable_from_open() -> None:
    reached = {S.OPEN}
    frontier = [S.OPEN]
    while frontier:
        state = frontier.pop()
        for a, b in TRANSITIONS:
            if a is state and b not in reached:
                reached.add(b)
                frontier.append(b)
    assert reached == set(CaseState)
