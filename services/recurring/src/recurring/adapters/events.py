"""The app's events as the contract's messages (protos/billing/events/v1)."""

from __future__ import annotations

from datetime import UTC, date, datetime, time
from zoneinfo import ZoneInfo

from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from billing.events.v1 import invoice_pb2, run_pb2, subscription_pb2
from billing_common.payments import FailureType
from billing_common.protos import FREQUENCIES, METHOD_TYPES, SUBSCRIPTION_STATES, date_pb, money_pb
from recurring.adapters.codec import DECLINE_KINDS_OR_NONE, FAILURE_TYPES_OR_NONE, RUN_KINDS_EVENT
from recurring.domain import events as ev
from recurring.domain.invoicing import Invoice
from recurring.domain.runs import RunCounts
from recurring.domain.subscription import Subscription

SUBSCRIPTION_EVENTS: dict[type[ev.SubscriptionEvent], type[Message]] = {
    ev.SubscriptionCreated: subscription_pb2.SubscriptionCreated,
    ev.SubscriptionActivated: subscription_pb2.SubscriptionActivated,
    ev.SubscriptionPlanChanged: subscription_pb2.SubscriptionPlanChanged,
    ev.SubscriptionPaused: subscription_pb2.SubscriptionPaused,
    ev.SubscriptionResumed: subscription_pb2.SubscriptionResumed,
    ev.SubscriptionCancelled: subscription_pb2.SubscriptionCancelled,
    ev.SubscriptionSuspended: subscription_pb2.SubscriptionSuspended,
    ev.SubscriptionCompleted: subscription_pb2.SubscriptionCompleted,
    ev.SubscriptionPastDue: subscription_pb2.SubscriptionPastDue,
    ev.SubscriptionRenewed: subscription_pb2.SubscriptionRenewed,
    ev.SubscriptionPaymentMethodUpdated: subscription_pb2.SubscriptionPaymentMethodUpdated,
}


class EventMessages:
    """Builds event messages; dates become the start of that day in the billing time zone."""

    def __init__(self, zone: ZoneInfo) -> None:
        self._zone = zone

    def _stamp(self, target: Timestamp, day: date) -> None:
        target.FromDatetime(datetime.combine(day, time(0), self._zone).astimezone(UTC))

    def snapshot(self, sub: Subscription) -> subscription_pb2.SubscriptionSnapshot:
        message = subscription_pb2.SubscriptionSnapshot(
            subscription_id=sub.subscription_id,
            account_id=sub.account_id,
            merchant_id=sub.merchant_id,
            status=SUBSCRIPTION_STATES.pb(sub.status),
            plan_code=sub.plan_code,
            plan_version=sub.plan_version,
            frequency=FREQUENCIES.pb(sub.frequency),
            amount=money_pb(sub.amount),
            version=sub.version,
        )
        self._stamp(message.current_period_start, sub.current_period_start)
        self._stamp(message.current_period_end, sub.current_period_end)
        return message

    def invoice_facts(self, invoice: Invoice) -> invoice_pb2.InvoiceFacts:
        facts = invoice_pb2.InvoiceFacts(
            invoice_id=invoice.invoice_id,
            subscription_id=invoice.subscription_id,
            account_id=invoice.account_id,
            merchant_id=invoice.merchant_id,
            amount_due=money_pb(invoice.amount_due),
        )
        self._stamp(facts.period_start, invoice.period_start)
        self._stamp(facts.period_end, invoice.period_end)
        return facts

    def message(self, event: ev.Event) -> Message:
        if isinstance(event, ev.SubscriptionEvent):
            return self._subscription_message(event)
        if isinstance(event, ev.InvoiceEvent):
            return self._invoice_message(event)
        return self._run_message(event)

    def _subscription_message(self, event: ev.SubscriptionEvent) -> Message:
        snapshot = self.snapshot(event.subscription)
        match event:
            case ev.SubscriptionPlanChanged():
                return subscription_pb2.SubscriptionPlanChanged(
                    subscription=snapshot,
                    previous_plan_code=event.previous_plan_code,
                    previous_plan_version=event.previous_plan_version,
                    cause=event.cause,
                )
            case ev.SubscriptionCancelled():
                return subscription_pb2.SubscriptionCancelled(
                    subscription=snapshot, at_period_end=event.at_period_end
                )
            case ev.SubscriptionPaymentMethodUpdated():
                return subscription_pb2.SubscriptionPaymentMethodUpdated(
                    subscription=snapshot, method_type=METHOD_TYPES.pb(event.subscription.payment_method.type)
                )
        return SUBSCRIPTION_EVENTS[type(event)](subscription=snapshot)

    def _invoice_message(self, event: ev.InvoiceEvent) -> Message:
        facts = self.invoice_facts(event.invoice)
        match event:
            case ev.InvoiceCreated():
                return invoice_pb2.InvoiceCreated(invoice=facts)
            case ev.InvoicePaid(payment=payment):
                return invoice_pb2.InvoicePaid(
                    invoice=facts, payment_id=payment.payment_id if payment else ""
                )
            case ev.InvoicePaymentFailed(attempt=txn):
                return invoice_pb2.InvoicePaymentFailed(
                    invoice=facts,
                    payment_id=txn.payment_id,
                    failure_type=FAILURE_TYPES_OR_NONE.pb(txn.failure_type),
                    decline_kind=DECLINE_KINDS_OR_NONE.pb(txn.decline_kind),
                    retryable=txn.retryable or txn.failure_type is FailureType.GATEWAY_UNREACHABLE,
                    decline_code=txn.decline_code,
                    attempt=txn.attempt,
                )
            case ev.InvoiceVoided():
                return invoice_pb2.InvoiceVoided(invoice=facts, reason=event.reason)
            case ev.InvoiceUncollectible():
                return invoice_pb2.InvoiceUncollectible(
                    invoice=facts, written_off=money_pb(event.invoice.amount_due)
                )
        raise TypeError(f"no event message for {type(event).__name__}")

    def _run_message(self, event: ev.RunEvent) -> Message:
        run = event.run
        kind = RUN_KINDS_EVENT.pb(run.kind)
        match event:
            case ev.RunStarted():
                return run_pb2.RunStarted(
                    run_id=run.run_id, billing_date=date_pb(run.billing_date), kind=kind, due=event.due
                )
            case ev.RunCompleted():
                return run_pb2.RunCompleted(
                    run_id=run.run_id,
                    billing_date=date_pb(run.billing_date),
                    kind=kind,
                    counts=_counts(run.counts),
                )
            case ev.RunStalled():
                stalled = run_pb2.RunStalled(
                    run_id=run.run_id,
                    billing_date=date_pb(run.billing_date),
                    kind=kind,
                    counts=_counts(run.counts),
                    open_items=run.progress.open_items or 0,
                )
                if run.progress.since is not None:
                    stalled.last_progress_at.FromDatetime(run.progress.since)
                return stalled
            case ev.RunHalted():
                return run_pb2.RunHalted(
                    run_id=run.run_id,
                    billing_date=date_pb(run.billing_date),
                    kind=kind,
                    gateway=event.gateway,
                    deferred_items=event.deferred_items,
                )
        raise TypeError(f"no event message for {type(event).__name__}")


def _counts(c: RunCounts) -> run_pb2.RunCounts:
    return run_pb2.RunCounts(
        due=c.due, charged=c.charged, failed=c.failed, skipped=c.skipped, deferred=c.deferred, parked=c.parked
    )
