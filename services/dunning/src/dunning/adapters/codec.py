"""Domain values <-> protobuf enums, and domain events -> dunning.* event messages."""

from __future__ import annotations

from google.protobuf.message import Message

from billing.common.v1 import common_pb2
from billing.events.v1 import dunning_pb2 as events
from billing_common.payments import DeclineKind, FailureType
from billing_common.protos import DECLINE_KINDS, EXHAUSTED_ACTIONS, FAILURE_TYPES, money_pb, stamp
from dunning.domain import events as ev
from dunning.domain.model import Failure


def failure_of(failure_type: int, decline_kind: int, decline_code: str, retryable: bool) -> Failure:
    return Failure(
        FAILURE_TYPES.get(failure_type, FailureType.UNSPECIFIED),
        DECLINE_KINDS.get(decline_kind, DeclineKind.UNSPECIFIED),
        decline_code,
        retryable,
    )


def failure_type_pb(failure: Failure) -> common_pb2.FailureType.ValueType:
    return FAILURE_TYPES.pb(failure.type)


def event_message(event: ev.CaseEvent) -> Message:
    invoice = event.invoice
    facts = events.CaseFacts(
        case_id=event.case_id,
        invoice_id=invoice.invoice_id,
        subscription_id=invoice.subscription_id,
        account_id=invoice.account_id,
        merchant_id=invoice.merchant_id,
        amount_due=money_pb(invoice.amount_due),
    )
    match event:
        case ev.CaseOpened(failure=failure):
            return events.DunningCaseOpened(
                dunning_case=facts, failure_type=failure_type_pb(failure), decline_code=failure.decline_code
            )
        case ev.RetryScheduled():
            scheduled = events.DunningRetryScheduled(
                dunning_case=facts,
                attempt=event.attempt,
                estimated_success_bp=event.estimated_success_bp,
                sample_size=event.sample_size,
            )
            stamp(scheduled.scheduled_at, event.scheduled_at)
            return scheduled
        case ev.AttemptFailed(failure=failure):
            return events.DunningAttemptFailed(
                dunning_case=facts,
                attempt=event.attempt,
                decline_code=failure.decline_code,
                failure_type=failure_type_pb(failure),
            )
        case ev.Recovered():
            return events.DunningRecovered(dunning_case=facts, attempts=event.attempts)
        case ev.Exhausted():
            return events.DunningExhausted(
                dunning_case=facts, action=EXHAUSTED_ACTIONS.pb(event.action), attempts=event.attempts
            )
        case ev.Held():
            return events.DunningHeld(dunning_case=facts, reason=event.reason)
        case ev.ReminderDue():
            reminder = events.DunningReminderDue(dunning_case=facts, attempt=event.attempt)
            stamp(reminder.attempt_at, event.attempt_at)
            return reminder
    raise TypeError(f"no event message for {type(event).__name__}")
