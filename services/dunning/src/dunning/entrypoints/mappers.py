"""Protobuf <-> domain for the admin RPCs and the consumed events."""

from __future__ import annotations

from datetime import datetime, timedelta

from google.protobuf.duration_pb2 import Duration

from billing.dunning.v1 import dunning_pb2 as pb
from billing.events.v1 import invoice_pb2 as invoice_events
from billing_common.protos import ProtoEnum, money_of, money_pb, stamp
from billing_common.subscriptions import ExhaustedAction
from dunning.adapters.codec import failure_of, failure_type_pb
from dunning.app.cases import CaseView, PaymentFailure
from dunning.domain.model import Attempt, AttemptOutcome, Case, CaseState, InvoiceRef, Transition
from dunning.domain.policy import AdaptiveSchedule, FixedSchedule, RetryPolicy

STATES = ProtoEnum(CaseState, pb.CaseState, "CASE_STATE_")
OUTCOMES = ProtoEnum(AttemptOutcome, pb.AttemptOutcome, "ATTEMPT_OUTCOME_")
ACTIONS = ProtoEnum(ExhaustedAction, pb.ExhaustedAction, "EXHAUSTED_ACTION_")


def _duration(delta: timedelta) -> Duration:
    duration = Duration()
    duration.FromTimedelta(delta)
    return duration


def attempt_pb(attempt: Attempt) -> pb.Attempt:
    message = pb.Attempt(
        number=attempt.number,
        estimated_success_bp=attempt.estimated_success_bp,
        sample_size=attempt.sample_size,
        reason=attempt.reason,
        outcome=OUTCOMES.pb(attempt.outcome),
        decline_code=attempt.decline_code,
    )
    stamp(message.scheduled_at, attempt.scheduled_at)
    stamp(message.attempted_at, attempt.attempted_at)
    return message


def transition_pb(transition: Transition) -> pb.CaseTransition:
    message = pb.CaseTransition(
        from_state=STATES.pb(transition.from_state),
        to_state=STATES.pb(transition.to_state),
        cause=f"{transition.cause}: {transition.detail}" if transition.detail else transition.cause,
    )
    stamp(message.at, transition.at)
    return message


def case_pb(case: Case, history: list[Transition] | None = None) -> pb.DunningCase:
    invoice = case.invoice
    message = pb.DunningCase(
        case_id=case.case_id,
        invoice_id=invoice.invoice_id,
        subscription_id=invoice.subscription_id,
        account_id=invoice.account_id,
        merchant_id=invoice.merchant_id,
        amount_due=money_pb(invoice.amount_due),
        state=STATES.pb(case.state),
        failure_type=failure_type_pb(case.failure),
        decline_code=case.failure.decline_code,
        attempts=[attempt_pb(a) for a in case.attempts],
        history=[transition_pb(t) for t in history or []],
        version=case.version,
    )
    stamp(message.opened_at, case.opened_at)
    stamp(message.next_attempt_at, case.next_attempt_at)
    return message


def view_pb(view: CaseView) -> pb.DunningCase:
    return case_pb(view.case, view.history)


def policy_from_pb(message: pb.RetryPolicy) -> RetryPolicy:
    schedule: FixedSchedule | AdaptiveSchedule | None = None
    kind = message.WhichOneof("schedule")
    if kind == "fixed":
        schedule = FixedSchedule(tuple(message.fixed.day_offsets))
    elif kind == "adaptive":
        schedule = AdaptiveSchedule(
            message.adaptive.min_gap.ToTimedelta(), message.adaptive.max_gap.ToTimedelta()
        )
    return RetryPolicy(
        merchant_id=message.merchant_id,
        max_attempts=message.max_attempts,
        max_window=message.max_window.ToTimedelta(),
        schedule=schedule,
        # Unset means the usual outcome: the subscription is suspended.
        exhausted_action=ACTIONS.get(message.exhausted_action, ExhaustedAction.SUSPEND),
        reminder_lead=message.reminder_lead.ToTimedelta(),
    )


def policy_pb(policy: RetryPolicy) -> pb.RetryPolicy:
    message = pb.RetryPolicy(
        merchant_id=policy.merchant_id,
        max_attempts=policy.max_attempts,
        max_window=_duration(policy.max_window),
        exhausted_action=ACTIONS.pb(policy.exhausted_action),
        reminder_lead=_duration(policy.reminder_lead),
    )
    if isinstance(policy.schedule, FixedSchedule):
        message.fixed.day_offsets.extend(policy.schedule.day_offsets)
    elif isinstance(policy.schedule, AdaptiveSchedule):
        message.adaptive.min_gap.CopyFrom(_duration(policy.schedule.min_gap))
        message.adaptive.max_gap.CopyFrom(_duration(policy.schedule.max_gap))
    return message


def invoice_ref(facts: invoice_events.InvoiceFacts) -> InvoiceRef:
    return InvoiceRef(
        facts.invoice_id,
        facts.subscription_id,
        facts.account_id,
        facts.merchant_id,
        money_of(facts.amount_due),
    )


def payment_failure(event: invoice_events.InvoicePaymentFailed, received_at: datetime) -> PaymentFailure:
    """The window runs from when dunning learned of the failure, on its own clock (the producer's
    clock may be a test clock far from this one)."""
    return PaymentFailure(
        invoice_ref(event.invoice),
        failure_of(event.failure_type, event.decline_kind, event.decline_code, event.retryable),
        received_at,
    )
