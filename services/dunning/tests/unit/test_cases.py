"""Case decisions: routing by failure, attempts and their outcomes, invoice events, operators."""

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from billing_common.money import Money
from billing_common.payments import DeclineKind, FailureType
from billing_common.subscriptions import ExhaustedAction
from dunning.domain import cases as decide
from dunning.domain import events as ev
from dunning.domain.cases import AttemptResult, Change, ResultKind
from dunning.domain.model import (
    TERMINAL_STATES,
    AttemptOutcome,
    Case,
    CaseState,
    Failure,
    InvoiceRef,
)
from dunning.domain.policy import FixedSchedule, RetryPolicy
from dunning.domain.schedule import Planning
from dunning.domain.transitions import IllegalTransition, is_allowed

S = CaseState
NOW = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)
DAY = timedelta(days=1)
INVOICE = InvoiceRef("inv-1", "sub-1", "acct-1", "merchant-1", Money(4900, "USD"))
SOFT = Failure(FailureType.CARDHOLDER, DeclineKind.SOFT, "insufficient_funds")
HARD = Failure(FailureType.CARDHOLDER, DeclineKind.HARD, "stolen_card", retryable=False)
MERCHANT = Failure(FailureType.MERCHANT, DeclineKind.UNSPECIFIED, "invalid_credentials", retryable=False)
UNREACHABLE = Failure(FailureType.GATEWAY_UNREACHABLE, DeclineKind.UNSPECIFIED, "")
PLANNING = Planning(
    RetryPolicy(
        "merchant-1",
        3,
        timedelta(days=14),
        FixedSchedule((1, 3, 5)),
        ExhaustedAction.SUSPEND,
        reminder_lead=timedelta(hours=12),
    )
)


def opened(failure: Failure = SOFT, planning: Planning = PLANNING) -> Change:
    return decide.open_case("case-1", INVOICE, failure, NOW, NOW, planning)


def stored(change: Change) -> Case:
    """The case as the store would hand it back."""
    return replace(change.case, version=change.case.version + 1)


def kinds(change: Change) -> list[type]:
    return [type(e) for e in change.events]


def attempt_once(case: Case, result: AttemptResult, at: datetime) -> Change:
    started = stored(decide.start_attempt(case, at, at + timedelta(minutes=2)))
    assert started.state is S.ATTEMPTING
    current = started.current_attempt
    assert current is not None
    return decide.record_outcome(started, current.number, result, at, PLANNING, at + timedelta(hours=6))


DECLINED = AttemptResult(ResultKind.DECLINED, SOFT)
SUCCEEDED = AttemptResult(ResultKind.SUCCEEDED)


def test_a_soft_decline_schedules_the_first_retry_on_the_policy_day() -> None:
    change = opened()
    case = change.case
    assert case.state is S.RETRY_SCHEDULED
    assert case.due_at == NOW + DAY == case.next_attempt_at
    assert case.reminder_at == NOW + DAY - timedelta(hours=12)
    assert [(t.from_state, t.to_state, t.cause) for t in change.transitions] == [
        (S.OPEN, S.RETRY_SCHEDULED, "payment_failed")
    ]
    assert kinds(change) == [ev.CaseOpened, ev.RetryScheduled]
    scheduled = change.events[1]
    assert isinstance(scheduled, ev.RetryScheduled)
    assert scheduled.attempt == 1
    assert scheduled.estimated_success_bp == case.attempts[0].estimated_success_bp > 0
    assert case.attempts[0].reason == "fixed schedule: day 1 after the first failure"


def test_an_unreachable_gateway_is_retried_like_a_soft_decline() -> None:
    assert opened(UNREACHABLE).case.state is S.RETRY_SCHEDULED


def test_a_hard_decline_waits_for_a_new_payment_method_until_the_window_ends() -> None:
    change = opened(HARD)
    assert change.case.state is S.AWAITING_PAYMENT_METHOD
    assert change.case.attempts == ()
    assert change.case.due_at == NOW + timedelta(days=14)
    assert kinds(change) == [ev.CaseOpened]


def test_a_merchant_failure_is_held_for_an_operator() -> None:
    change = opened(MERCHANT)
    assert change.case.state is S.HELD
    assert change.case.due_at is None
    assert kinds(change) == [ev.CaseOpened, ev.Held]
    held = change.events[1]
    assert isinstance(held, ev.Held) and "invalid_credentials" in held.reason


def test_failed_attempts_follow_the_schedule_until_exhausted() -> None:
    case = stored(opened())
    for number, day in ((1, 1), (2, 3)):
        change = attempt_once(case, DECLINED, NOW + day * DAY)
        case = stored(change)
        assert case.state is S.RETRY_SCHEDULED
        assert case.attempts[number - 1].outcome is AttemptOutcome.FAILED
        assert change.outcome is not None and change.outcome.observation.succeeded is False
        assert change.outcome.observation.context.attempt_number == number
    assert case.next_attempt_at == NOW + 5 * DAY
    last = attempt_once(case, DECLINED, NOW + 5 * DAY)
    assert last.case.state is S.EXHAUSTED
    assert last.case.ended_at == NOW + 5 * DAY
    assert kinds(last) == [ev.AttemptFailed, ev.Exhausted]
    exhausted = last.events[1]
    assert isinstance(exhausted, ev.Exhausted)
    assert (exhausted.action, exhausted.attempts) == (ExhaustedAction.SUSPEND, 3)


def test_a_successful_attempt_recovers_the_case() -> None:
    change = attempt_once(stored(opened()), SUCCEEDED, NOW + DAY)
    assert change.case.state is S.RECOVERED
    assert kinds(change) == [ev.Recovered]
    assert change.case.attempts[0].outcome is AttemptOutcome.SUCCEEDED
    assert change.outcome is not None and change.outcome.observation.succeeded


def test_a_hard_decline_on_a_retry_waits_and_a_new_method_triggers_an_attempt_at_once() -> None:
    change = attempt_once(stored(opened()), AttemptResult(ResultKind.DECLINED, HARD), NOW + DAY)
    case = stored(change)
    assert case.state is S.AWAITING_PAYMENT_METHOD
    later = NOW + 2 * DAY
    updated = decide.payment_method_updated(case, later, PLANNING)
    assert updated.case.state is S.RETRY_SCHEDULED
    assert updated.case.due_at == later
    assert updated.case.current_attempt is not None
    assert updated.case.current_attempt.number == 2
    assert updated.transitions[-1].cause == "payment_method_updated"
    # A reminder cannot go out 12 hours before an attempt made now: it goes out at once.
    assert kinds(updated) == [ev.RetryScheduled, ev.ReminderDue]


def test_a_new_method_changes_nothing_for_a_case_that_is_not_waiting_for_one() -> None:
    case = stored(opened())
    assert not decide.payment_method_updated(case, NOW, PLANNING).changed


def test_a_merchant_failure_on_a_retry_holds_the_case() -> None:
    change = attempt_once(stored(opened()), AttemptResult(ResultKind.DECLINED, MERCHANT), NOW + DAY)
    assert change.case.state is S.HELD
    assert kinds(change) == [ev.AttemptFailed, ev.Held]


def test_a_refusal_by_recurring_holds_the_case_without_training_data() -> None:
    change = attempt_once(
        stored(opened()), AttemptResult(ResultKind.REFUSED, detail="FAILED_PRECONDITION"), NOW + DAY
    )
    assert change.case.state is S.HELD
    assert change.case.attempts[0].outcome is AttemptOutcome.CANCELLED
    assert change.outcome is None


@pytest.mark.parametrize("kind", [ResultKind.PENDING, ResultKind.UNAVAILABLE])
def test_an_unknown_result_keeps_the_attempt_in_flight_to_ask_again(kind: ResultKind) -> None:
    change = attempt_once(stored(opened()), AttemptResult(kind), NOW + DAY)
    assert change.case.state is S.ATTEMPTING
    assert change.case.due_at == NOW + DAY + timedelta(hours=6)
    assert change.transitions == () and change.events == () and change.outcome is None


def test_paid_during_an_attempt_is_recovered_and_the_late_result_is_only_data() -> None:
    case = stored(opened())
    started = stored(decide.start_attempt(case, NOW + DAY, NOW + DAY + timedelta(minutes=2)))
    paid = stored(decide.invoice_paid(started, NOW + DAY))
    assert paid.state is S.RECOVERED
    late = decide.record_outcome(paid, 1, SUCCEEDED, NOW + DAY, PLANNING, NOW + 2 * DAY)
    assert late.case.state is S.RECOVERED
    assert late.transitions == () and late.events == ()
    assert late.outcome is not None  # still training data


def test_paid_while_waiting_for_a_retry_was_paid_elsewhere() -> None:
    change = decide.invoice_paid(stored(opened()), NOW)
    assert change.case.state is S.CLOSED
    assert change.transitions[-1].cause == "invoice_paid_elsewhere"
    assert change.case.attempts[0].outcome is AttemptOutcome.CANCELLED
    assert change.case.due_at is None and change.case.reminder_at is None


def test_voided_ends_the_case_wherever_it_stands() -> None:
    for failure in (SOFT, HARD, MERCHANT):
        assert decide.invoice_voided(stored(opened(failure)), NOW, "duplicate").case.state is S.CLOSED


def test_events_about_a_finished_case_are_refused() -> None:
    recovered = stored(attempt_once(stored(opened()), SUCCEEDED, NOW + DAY))
    with pytest.raises(IllegalTransition):
        decide.invoice_paid(recovered, NOW + 2 * DAY)
    with pytest.raises(IllegalTransition):
        decide.invoice_voided(recovered, NOW + 2 * DAY, "")


def test_pause_and_resume() -> None:
    case = stored(opened())
    paused = decide.pause(case, NOW, "customer called")
    held = stored(paused)
    assert held.state is S.HELD and held.due_at is None
    assert held.attempts[0].outcome is AttemptOutcome.CANCELLED
    assert kinds(paused) == [ev.Held]
    assert not decide.pause(held, NOW, "again").changed
    resumed = decide.resume(held, NOW + 2 * DAY, PLANNING)
    assert resumed.case.state is S.RETRY_SCHEDULED
    assert resumed.case.current_attempt is not None and resumed.case.current_attempt.number == 2
    assert resumed.case.due_at == NOW + 2 * DAY  # day 1 of the schedule has passed: now
    with pytest.raises(IllegalTransition):
        decide.resume(case, NOW, PLANNING)


def test_an_operators_action_names_the_person_in_the_case_history() -> None:
    paused = decide.acted_by(decide.pause(stored(opened()), NOW, "customer called"), "operator:alice")
    assert [t.detail for t in paused.transitions] == ["customer called (by operator:alice)"]
    resumed = decide.acted_by(decide.resume(stored(paused), NOW, PLANNING), "operator:alice")
    assert all(t.detail.endswith("(by operator:alice)") for t in resumed.transitions)
    assert decide.acted_by(paused, "") == paused


def test_resuming_a_hard_declined_case_waits_for_a_method_again() -> None:
    held = stored(decide.pause(stored(opened(HARD)), NOW, "check"))
    assert decide.resume(held, NOW, PLANNING).case.state is S.AWAITING_PAYMENT_METHOD


def test_retry_now_moves_the_scheduled_attempt_to_now_keeping_its_number() -> None:
    change = decide.retry_now(stored(opened()), NOW + timedelta(hours=1), PLANNING)
    assert change.case.state is S.RETRY_SCHEDULED
    assert [a.number for a in change.case.attempts] == [1]
    assert change.case.due_at == NOW + timedelta(hours=1)
    assert change.transitions[-1].cause == "operator_retry_now"


def test_retry_now_after_a_merchant_hold_makes_a_new_attempt() -> None:
    change = decide.retry_now(stored(opened(MERCHANT)), NOW, PLANNING)
    assert change.case.state is S.RETRY_SCHEDULED
    assert change.case.due_at == NOW


def test_reset_repeats_the_stuck_attempt_with_the_same_number() -> None:
    started = stored(decide.start_attempt(stored(opened()), NOW + DAY, NOW + DAY + timedelta(minutes=2)))
    reset = decide.reset(started, NOW + 2 * DAY, PLANNING, "pod gone")
    assert reset.case.state is S.RETRY_SCHEDULED
    assert [a.number for a in reset.case.attempts] == [1]
    assert reset.case.attempts[0].attempted_at is None
    assert reset.case.due_at == NOW + 2 * DAY
    assert reset.transitions[-1].cause == "operator_reset"
    with pytest.raises(IllegalTransition):
        decide.reset(stored(opened()), NOW, PLANNING)


def test_the_window_ends_a_case_that_waited_for_a_method() -> None:
    change = decide.window_elapsed(stored(opened(HARD)), NOW + 14 * DAY, PLANNING)
    assert change.case.state is S.EXHAUSTED
    assert kinds(change) == [ev.Exhausted]


def test_a_reminder_goes_out_once_before_the_attempt() -> None:
    case = stored(opened())
    assert case.reminder_at is not None
    change = decide.send_reminder(case, case.reminder_at)
    assert kinds(change) == [ev.ReminderDue]
    assert change.case.reminder_at is None


# ---------------------------------------------------------------- property: any sequence of events

ACTIONS = [
    "attempt_failed",
    "attempt_hard",
    "attempt_merchant",
    "attempt_succeeded",
    "paid",
    "voided",
    "method_updated",
    "pause",
    "resume",
    "retry_now",
    "reset",
    "window",
]


def step(case: Case, action: str, at: datetime) -> list[Change]:
    if action.startswith("attempt_"):
        result = {
            "attempt_failed": DECLINED,
            "attempt_hard": AttemptResult(ResultKind.DECLINED, HARD),
            "attempt_merchant": AttemptResult(ResultKind.DECLINED, MERCHANT),
            "attempt_succeeded": SUCCEEDED,
        }[action]
        if case.state is not S.RETRY_SCHEDULED:
            raise IllegalTransition(case.state, S.ATTEMPTING, decide.TransitionCause.ATTEMPT_STARTED)
        start = decide.start_attempt(case, at, at + timedelta(minutes=2))
        started = stored(start)
        current = started.current_attempt
        assert current is not None
        return [start, decide.record_outcome(started, current.number, result, at, PLANNING, at)]
    return [
        {
            "paid": lambda: decide.invoice_paid(case, at),
            "voided": lambda: decide.invoice_voided(case, at, ""),
            "method_updated": lambda: decide.payment_method_updated(case, at, PLANNING),
            "pause": lambda: decide.pause(case, at, ""),
            "resume": lambda: decide.resume(case, at, PLANNING),
            "retry_now": lambda: decide.retry_now(case, at, PLANNING),
            "reset": lambda: decide.reset(case, at, PLANNING),
            "window": lambda: decide.window_elapsed(case, at, PLANNING),
        }[action]()
    ]


@settings(max_examples=300)
@given(st.sampled_from([SOFT, HARD, MERCHANT, UNREACHABLE]), st.lists(st.sampled_from(ACTIONS), max_size=25))
def test_any_sequence_only_makes_legal_recorded_transitions(failure: Failure, actions: list[str]) -> None:
    change = opened(failure)
    case = stored(change)
    history = list(change.transitions)
    at = NOW
    for action in actions:
        at += timedelta(hours=7)
        try:
            changes = step(case, action, at)
        except IllegalTransition:
            continue
        for change in changes:
            history += change.transitions
        case = stored(changes[-1])
        # A finished case has nothing due; an unfinished one never has an end time.
        assert (case.state in TERMINAL_STATES) == (case.ended_at is not None)
        if case.state in TERMINAL_STATES:
            assert case.due_at is None and case.reminder_at is None
        numbers = [a.number for a in case.attempts]
        assert numbers == sorted(set(numbers))
    previous = S.OPEN
    for transition in history:
        assert transition.from_state is previous
        assert is_allowed(
            transition.from_state, transition.to_state, decide.TransitionCause(transition.cause)
        )
        previous = transition.to_state
    assert previous is case.state
