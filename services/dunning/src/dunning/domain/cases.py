"""Decisions about a case: each takes the case as it stands and returns the change to apply.

Deciding is separate from applying (the adapters store the change, its history and its events
in one transaction). Every state change goes through `_Decision.move`, which checks it against
the transition table and records it with its cause.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from enum import StrEnum
from typing import Any

from dunning.domain import events as ev
from dunning.domain.estimator import AttemptContext, Observation
from dunning.domain.model import (
    TERMINAL_STATES,
    Attempt,
    AttemptOutcome,
    Case,
    CaseState,
    Failure,
    FailureRoute,
    InvoiceRef,
    Transition,
)
from dunning.domain.schedule import PlannedAttempt, Planning, estimate_at, plan_next_attempt, window_end
from dunning.domain.transitions import IllegalTransition, TransitionCause, check

S = CaseState


class ResultKind(StrEnum):
    SUCCEEDED = "succeeded"
    DECLINED = "declined"
    # Accepted but not final (ACH) or of unknown outcome: ask again later with the same key.
    PENDING = "pending"
    # Recurring will not charge the invoice (no longer open, or not found).
    REFUSED = "refused"
    # Recurring could not be reached: nothing is known, try the same attempt again shortly.
    UNAVAILABLE = "unavailable"


@dataclass(frozen=True)
class AttemptResult:
    kind: ResultKind
    failure: Failure | None = None
    detail: str = ""


@dataclass(frozen=True)
class RecordedOutcome:
    """A finished attempt as training data for the estimator."""

    attempt: int
    attempted_at: datetime
    observation: Observation


@dataclass(frozen=True)
class Change:
    before: Case | None
    case: Case
    transitions: tuple[Transition, ...] = ()
    events: tuple[ev.CaseEvent, ...] = ()
    outcome: RecordedOutcome | None = None

    @property
    def changed(self) -> bool:
        return self.before != self.case or bool(self.events) or self.outcome is not None


class _Decision:
    def __init__(self, case: Case, now: datetime, *, new: bool = False) -> None:
        self.before = None if new else case
        self.case = case
        self.now = now
        self.transitions: list[Transition] = []
        self.events: list[ev.CaseEvent] = []
        self.outcome: RecordedOutcome | None = None

    def move(self, to: CaseState, cause: TransitionCause, detail: str = "") -> None:
        check(self.case.state, to, cause)
        self.transitions.append(Transition(self.case.state, to, cause.value, self.now, detail))
        self.case = replace(self.case, state=to)
        if to in TERMINAL_STATES:
            self.case = replace(self.case, ended_at=self.now, due_at=None, reminder_at=None)

    def update(self, **fields: Any) -> None:
        self.case = replace(self.case, **fields)

    def put_attempt(self, attempt: Attempt) -> None:
        """Replace the attempt with the same number, or add it."""
        others = [a for a in self.case.attempts if a.number != attempt.number]
        self.case = replace(self.case, attempts=tuple(sorted([*others, attempt], key=lambda a: a.number)))

    def cancel_unstarted_attempt(self) -> None:
        current = self.case.current_attempt
        if current is not None and current.attempted_at is None:
            self.put_attempt(replace(current, outcome=AttemptOutcome.CANCELLED))

    def emit(self, event: ev.CaseEvent) -> None:
        self.events.append(event)

    def done(self) -> Change:
        return Change(self.before, self.case, tuple(self.transitions), tuple(self.events), self.outcome)


def _facts(case: Case) -> tuple[str, InvoiceRef]:
    return case.case_id, case.invoice


def open_case(
    case_id: str,
    invoice: InvoiceRef,
    failure: Failure,
    failed_at: datetime,
    now: datetime,
    planning: Planning,
) -> Change:
    """A new case for a failed invoice, routed by what kind of failure it was."""
    case = Case(case_id, invoice, S.OPEN, failure, first_failed_at=failed_at, opened_at=now)
    d = _Decision(case, now, new=True)
    d.emit(ev.CaseOpened(case_id, invoice, failure))
    route = failure.route
    if route is FailureRoute.RETRY:
        _schedule_next(d, planning, TransitionCause.PAYMENT_FAILED)
    elif route is FailureRoute.AWAIT_PAYMENT_METHOD:
        _await_payment_method(d, planning, TransitionCause.PAYMENT_FAILED)
    else:
        _hold(d, TransitionCause.PAYMENT_FAILED, _hold_reason(failure))
    return d.done()


def start_attempt(case: Case, now: datetime, lease_until: datetime) -> Change:
    """A worker claimed the due attempt; the lease ends when another worker may take it over."""
    d = _Decision(case, now)
    current = case.current_attempt
    if current is None:
        return d.done()
    d.move(S.ATTEMPTING, TransitionCause.ATTEMPT_STARTED, f"attempt {current.number}")
    d.put_attempt(replace(current, attempted_at=now))
    d.update(due_at=lease_until, reminder_at=None)
    return d.done()


def take_over_attempt(case: Case, now: datetime, lease_until: datetime) -> Change:
    """The previous worker's lease ran out (crash, or a result still pending): repeat the same
    attempt, with the same idempotency key, so recurring answers it without charging twice."""
    d = _Decision(case, now)
    d.update(due_at=lease_until)
    return d.done()


def record_outcome(
    case: Case,
    number: int,
    result: AttemptResult,
    now: datetime,
    planning: Planning,
    ask_again_at: datetime,
) -> Change:
    """What recurring answered for attempt `number`.

    The outcome is always kept as training data; the case moves only if that attempt is still
    the one in flight (an invoice event, a pause or a reset may have moved it meanwhile).
    """
    d = _Decision(case, now)
    attempt = next((a for a in case.attempts if a.number == number), None)
    if attempt is None:
        return d.done()
    live = case.state is S.ATTEMPTING and case.current_attempt == attempt
    if result.kind in (ResultKind.PENDING, ResultKind.UNAVAILABLE):
        if live:
            d.update(due_at=ask_again_at)
        return d.done()
    if attempt.outcome is AttemptOutcome.SCHEDULED:
        if result.kind is ResultKind.REFUSED:
            d.put_attempt(replace(attempt, outcome=AttemptOutcome.CANCELLED))
        else:
            succeeded = result.kind is ResultKind.SUCCEEDED
            code = "" if succeeded or result.failure is None else result.failure.decline_code
            attempted_at = attempt.attempted_at or now
            d.put_attempt(
                replace(
                    attempt,
                    outcome=AttemptOutcome.SUCCEEDED if succeeded else AttemptOutcome.FAILED,
                    decline_code=code,
                    attempted_at=attempted_at,
                )
            )
            observation = Observation(_context(case, attempt, attempted_at), succeeded)
            d.outcome = RecordedOutcome(number, attempted_at, observation)
    if not live:
        return d.done()
    if result.kind is ResultKind.SUCCEEDED:
        d.move(S.RECOVERED, TransitionCause.ATTEMPT_SUCCEEDED, f"attempt {number}")
        d.emit(ev.Recovered(*_facts(case), attempts=d.case.attempts_started))
    elif result.kind is ResultKind.REFUSED:
        d.update(due_at=None)
        _hold(d, TransitionCause.ATTEMPT_REFUSED, f"recurring refused attempt {number}: {result.detail}")
    else:
        failure = result.failure or case.failure
        d.update(failure=failure)
        d.emit(ev.AttemptFailed(*_facts(case), attempt=number, failure=failure))
        route = failure.route
        if route is FailureRoute.RETRY:
            _schedule_next(d, planning, TransitionCause.ATTEMPT_FAILED)
        elif route is FailureRoute.AWAIT_PAYMENT_METHOD:
            _await_payment_method(d, planning, TransitionCause.ATTEMPT_HARD_DECLINE)
        else:
            d.update(due_at=None)
            _hold(d, TransitionCause.ATTEMPT_MERCHANT_FAILURE, _hold_reason(failure))
    return d.done()


def _context(case: Case, attempt: Attempt, attempted_at: datetime) -> AttemptContext:
    """The attempt as the estimator saw it: the code it followed, its ordinal, its time."""
    ordinal = sum(1 for a in case.attempts if a.attempted_at is not None and a.number < attempt.number) + 1
    return AttemptContext.at(case.failure.statistics_code, ordinal, case.first_failed_at, attempted_at)


def invoice_paid(case: Case, now: datetime) -> Change:
    """Paid: recovered if our attempt was in flight, otherwise paid elsewhere (closed)."""
    d = _Decision(case, now)
    current = case.current_attempt
    ours = case.state is S.ATTEMPTING or (current is not None and current.in_flight)
    if ours:
        d.move(S.RECOVERED, TransitionCause.INVOICE_PAID)
        d.emit(ev.Recovered(*_facts(case), attempts=case.attempts_started))
    else:
        d.move(S.CLOSED, TransitionCause.INVOICE_PAID_ELSEWHERE)
        d.cancel_unstarted_attempt()
    return d.done()


def invoice_voided(case: Case, now: datetime, reason: str) -> Change:
    d = _Decision(case, now)
    d.move(S.CLOSED, TransitionCause.INVOICE_VOIDED, reason)
    d.cancel_unstarted_attempt()
    return d.done()


def payment_method_updated(case: Case, now: datetime, planning: Planning) -> Change:
    """A case waiting for a new payment method tries it at once; other cases are unaffected."""
    d = _Decision(case, now)
    if case.state is S.AWAITING_PAYMENT_METHOD:
        _attempt_now(d, planning, TransitionCause.PAYMENT_METHOD_UPDATED, "the payment method was updated")
    return d.done()


def acted_by(change: Change, actor: str) -> Change:
    """An operator's action names who asked for it in the case's history (`operator:alice`)."""
    if not actor:
        return change
    named = tuple(
        replace(t, detail=f"{t.detail} (by {actor})" if t.detail else f"by {actor}")
        for t in change.transitions
    )
    return replace(change, transitions=named)


def pause(case: Case, now: datetime, reason: str) -> Change:
    d = _Decision(case, now)
    if case.state is S.HELD:
        return d.done()
    d.move(S.HELD, TransitionCause.OPERATOR_PAUSE, reason)
    d.cancel_unstarted_attempt()
    d.update(due_at=None, reminder_at=None)
    d.emit(ev.Held(*_facts(case), reason=reason or "paused by an operator"))
    return d.done()


def resume(case: Case, now: datetime, planning: Planning) -> Change:
    """Back to where the failure leads: waiting for a method after a hard decline, else retrying."""
    if case.state is not S.HELD:
        raise IllegalTransition(case.state, S.RETRY_SCHEDULED, TransitionCause.OPERATOR_RESUME)
    d = _Decision(case, now)
    current = case.current_attempt
    if current is not None and current.in_flight:
        _reschedule(d, current, planning, TransitionCause.OPERATOR_RESUME, "resumed")
    elif case.failure.route is FailureRoute.AWAIT_PAYMENT_METHOD:
        _await_payment_method(d, planning, TransitionCause.OPERATOR_RESUME)
    else:
        _schedule_next(d, planning, TransitionCause.OPERATOR_RESUME)
    return d.done()


def retry_now(case: Case, now: datetime, planning: Planning) -> Change:
    """An operator asks for the next attempt now (also after a hold or without a new method)."""
    d = _Decision(case, now)
    current = case.current_attempt
    scheduled = case.state is S.RETRY_SCHEDULED
    held_in_flight = case.state is S.HELD and current is not None and current.in_flight
    if current is not None and (scheduled or held_in_flight):
        _reschedule(d, current, planning, TransitionCause.OPERATOR_RETRY_NOW, "retry now")
    else:
        _attempt_now(d, planning, TransitionCause.OPERATOR_RETRY_NOW, "an operator asked to retry now")
    return d.done()


def reset(case: Case, now: datetime, planning: Planning, reason: str = "") -> Change:
    """A case stuck in ATTEMPTING goes back to RETRY_SCHEDULED with the same attempt (same
    idempotency key), so a charge that did happen is answered, not repeated."""
    current = case.current_attempt
    if case.state is not S.ATTEMPTING or current is None:
        raise IllegalTransition(case.state, S.RETRY_SCHEDULED, TransitionCause.OPERATOR_RESET)
    d = _Decision(case, now)
    _reschedule(
        d, current, planning, TransitionCause.OPERATOR_RESET, f"reset ({reason})" if reason else "reset"
    )
    return d.done()


def window_elapsed(case: Case, now: datetime, planning: Planning) -> Change:
    """A case that waited for a payment method until the end of its window gives up."""
    d = _Decision(case, now)
    d.move(S.EXHAUSTED, TransitionCause.WINDOW_ELAPSED)
    d.emit(
        ev.Exhausted(*_facts(case), action=planning.policy.exhausted_action, attempts=case.attempts_started)
    )
    return d.done()


def send_reminder(case: Case, now: datetime) -> Change:
    d = _Decision(case, now)
    current = case.current_attempt
    if case.state is S.RETRY_SCHEDULED and current is not None:
        d.emit(ev.ReminderDue(*_facts(case), attempt=current.number, attempt_at=current.scheduled_at))
    d.update(reminder_at=None)
    return d.done()


# ---------------------------------------------------------------- shared steps


def _schedule_next(d: _Decision, planning: Planning, cause: TransitionCause) -> None:
    case = d.case
    plan = plan_next_attempt(
        planning,
        decline_code=case.failure.statistics_code,
        first_failed_at=case.first_failed_at,
        attempts_started=case.attempts_started,
        previous_attempt_at=case.last_attempted_at,
        now=d.now,
    )
    if plan is None:
        d.move(S.EXHAUSTED, TransitionCause.ATTEMPTS_EXHAUSTED, f"{case.attempts_started} attempts made")
        d.emit(
            ev.Exhausted(
                *_facts(case), action=planning.policy.exhausted_action, attempts=case.attempts_started
            )
        )
        return
    _put_scheduled(d, planning, case.next_number, plan, cause)


def _attempt_now(d: _Decision, planning: Planning, cause: TransitionCause, reason: str) -> None:
    case = d.case
    chance = estimate_at(
        planning, case.failure.statistics_code, case.attempts_started + 1, case.first_failed_at, d.now
    )
    _put_scheduled(d, planning, case.next_number, PlannedAttempt(d.now, chance, reason), cause)


def _reschedule(d: _Decision, current: Attempt, planning: Planning, cause: TransitionCause, why: str) -> None:
    """The current attempt (scheduled, or in flight when it stopped) again now, same number."""
    ordinal = sum(1 for a in d.case.attempts if a.attempted_at is not None and a.number < current.number) + 1
    chance = estimate_at(planning, d.case.failure.statistics_code, ordinal, d.case.first_failed_at, d.now)
    reason = f"{why}: attempt {current.number} now, with its own idempotency key"
    _put_scheduled(d, planning, current.number, PlannedAttempt(d.now, chance, reason), cause)


def _put_scheduled(
    d: _Decision, planning: Planning, number: int, plan: PlannedAttempt, cause: TransitionCause
) -> None:
    attempt = Attempt(
        number=number,
        scheduled_at=plan.at,
        estimated_success_bp=plan.estimate.basis_points,
        sample_size=plan.estimate.sample_size,
        reason=plan.reason,
    )
    d.put_attempt(attempt)
    d.move(S.RETRY_SCHEDULED, cause, f"attempt {number} at {plan.at.isoformat()}")
    d.update(due_at=plan.at)
    d.emit(
        ev.RetryScheduled(
            *_facts(d.case),
            attempt=number,
            scheduled_at=plan.at,
            estimated_success_bp=attempt.estimated_success_bp,
            sample_size=attempt.sample_size,
        )
    )
    lead = planning.policy.reminder_lead
    remind_at = plan.at - lead
    if not lead:
        d.update(reminder_at=None)
    elif remind_at <= d.now:
        d.update(reminder_at=None)
        d.emit(ev.ReminderDue(*_facts(d.case), attempt=number, attempt_at=plan.at))
    else:
        d.update(reminder_at=remind_at)


def _await_payment_method(d: _Decision, planning: Planning, cause: TransitionCause) -> None:
    d.move(S.AWAITING_PAYMENT_METHOD, cause, d.case.failure.decline_code)
    # The worker gives up at the end of the window if no new method arrived by then.
    d.update(due_at=window_end(planning.policy, d.case.first_failed_at), reminder_at=None)


def _hold(d: _Decision, cause: TransitionCause, reason: str) -> None:
    d.move(S.HELD, cause, reason)
    d.update(due_at=None, reminder_at=None)
    d.emit(ev.Held(*_facts(d.case), reason=reason))


def _hold_reason(failure: Failure) -> str:
    code = failure.decline_code or failure.type.value
    return f"{failure.type.value} failure ({code}): needs an operator, not a customer retry"
