"""The app's events as the contract's messages (protos/billing/events/v1)."""

from __future__ import annotations

from datetime import UTC, date, datetime, time
from zoneinfo import ZoneInfo

from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from billing.common.v1 import common_pb2
from billing.events.v1 import invoice_pb2, run_pb2, subscription_pb2
from billing_common.protos import date_pb, money_pb
from recurring.domain.events import Event, EventType
from recurring.domain.invoicing import Invoice
from recurring.domain.payments import DeclineKind, FailureType
from recurring.domain.runs import Run, RunCounts, RunKind
from recurring.domain.schedule import Frequency
from recurring.domain.status import SubscriptionStatus
from recurring.domain.subscription import MethodType, Subscription

STATES = {
    SubscriptionStatus.TRIALING: subscription_pb2.SUBSCRIPTION_STATE_TRIALING,
    SubscriptionStatus.ACTIVE: subscription_pb2.SUBSCRIPTION_STATE_ACTIVE,
    SubscriptionStatus.PAST_DUE: subscription_pb2.SUBSCRIPTION_STATE_PAST_DUE,
    SubscriptionStatus.PAUSED: subscription_pb2.SUBSCRIPTION_STATE_PAUSED,
    SubscriptionStatus.SUSPENDED: subscription_pb2.SUBSCRIPTION_STATE_SUSPENDED,
    SubscriptionStatus.CANCELLED: subscription_pb2.SUBSCRIPTION_STATE_CANCELLED,
    SubscriptionStatus.COMPLETED: subscription_pb2.SUBSCRIPTION_STATE_COMPLETED,
}
FREQUENCIES = {
    Frequency.MONTHLY: common_pb2.BILLING_FREQUENCY_MONTHLY,
    Frequency.WEEKLY: common_pb2.BILLING_FREQUENCY_WEEKLY,
    Frequency.BIWEEKLY: common_pb2.BILLING_FREQUENCY_BIWEEKLY,
    Frequency.FOUR_WEEKLY: common_pb2.BILLING_FREQUENCY_FOUR_WEEKLY,
    Frequency.ONE_TIME: common_pb2.BILLING_FREQUENCY_ONE_TIME,
}
METHOD_TYPES = {
    MethodType.CARD: common_pb2.PAYMENT_METHOD_TYPE_CARD,
    MethodType.ACH: common_pb2.PAYMENT_METHOD_TYPE_ACH,
    MethodType.STRIPE: common_pb2.PAYMENT_METHOD_TYPE_STRIPE,
}
FAILURE_TYPES = {
    FailureType.NONE: common_pb2.FAILURE_TYPE_NONE,
    FailureType.CARDHOLDER: common_pb2.FAILURE_TYPE_CARDHOLDER,
    FailureType.MERCHANT: common_pb2.FAILURE_TYPE_MERCHANT,
    FailureType.GATEWAY_UNREACHABLE: common_pb2.FAILURE_TYPE_GATEWAY_UNREACHABLE,
    FailureType.UNKNOWN_OUTCOME: common_pb2.FAILURE_TYPE_UNKNOWN_OUTCOME,
}
DECLINE_KINDS = {
    DeclineKind.NONE: common_pb2.DECLINE_KIND_NONE,
    DeclineKind.SOFT: common_pb2.DECLINE_KIND_SOFT,
    DeclineKind.HARD: common_pb2.DECLINE_KIND_HARD,
}
RUN_KINDS = {RunKind.DAILY: run_pb2.RUN_KIND_DAILY, RunKind.MONTHLY: run_pb2.RUN_KIND_MONTHLY}
SUBSCRIPTION_EVENTS: dict[EventType, type[Message]] = {
    EventType.SUBSCRIPTION_CREATED: subscription_pb2.SubscriptionCreated,
    EventType.SUBSCRIPTION_ACTIVATED: subscription_pb2.SubscriptionActivated,
    EventType.SUBSCRIPTION_PLAN_CHANGED: subscription_pb2.SubscriptionPlanChanged,
    EventType.SUBSCRIPTION_PAUSED: subscription_pb2.SubscriptionPaused,
    EventType.SUBSCRIPTION_RESUMED: subscription_pb2.SubscriptionResumed,
    EventType.SUBSCRIPTION_CANCELLED: subscription_pb2.SubscriptionCancelled,
    EventType.SUBSCRIPTION_SUSPENDED: subscription_pb2.SubscriptionSuspended,
    EventType.SUBSCRIPTION_COMPLETED: subscription_pb2.SubscriptionCompleted,
    EventType.SUBSCRIPTION_PAST_DUE: subscription_pb2.SubscriptionPastDue,
    EventType.SUBSCRIPTION_RENEWED: subscription_pb2.SubscriptionRenewed,
    EventType.SUBSCRIPTION_PAYMENT_METHOD_UPDATED: subscription_pb2.SubscriptionPaymentMethodUpdated,
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
            status=STATES[sub.status],
            plan_code=sub.plan_code,
            plan_version=sub.plan_version,
            frequency=FREQUENCIES[sub.frequency],
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

    def message(self, event: Event) -> Message:
        if event.type in SUBSCRIPTION_EVENTS:
            return self._subscription_message(event)
        if event.invoice is not None:
            return self._invoice_message(event, event.invoice)
        assert event.run is not None
        return self._run_message(event, event.run)

    def _subscription_message(self, event: Event) -> Message:
        assert event.subscription is not None
        message: Message = SUBSCRIPTION_EVENTS[event.type](subscription=self.snapshot(event.subscription))
        if isinstance(message, subscription_pb2.SubscriptionPlanChanged):
            message.previous_plan_code = event.extra["previous_plan_code"]
            message.previous_plan_version = event.extra["previous_plan_version"]
            message.cause = event.extra["cause"]
        elif isinstance(message, subscription_pb2.SubscriptionCancelled):
            message.at_period_end = bool(event.extra.get("at_period_end"))
        elif isinstance(message, subscription_pb2.SubscriptionPaymentMethodUpdated):
            message.method_type = METHOD_TYPES[event.subscription.payment_method.type]
        return message

    def _invoice_message(self, event: Event, invoice: Invoice) -> Message:
        facts = self.invoice_facts(invoice)
        txn = event.transaction
        if event.type is EventType.INVOICE_CREATED:
            return invoice_pb2.InvoiceCreated(invoice=facts)
        if event.type is EventType.INVOICE_PAID:
            return invoice_pb2.InvoicePaid(invoice=facts, payment_id=txn.payment_id if txn else "")
        if event.type is EventType.INVOICE_PAYMENT_FAILED:
            assert txn is not None
            return invoice_pb2.InvoicePaymentFailed(
                invoice=facts,
                payment_id=txn.payment_id,
                failure_type=FAILURE_TYPES[txn.failure_type],
                decline_kind=DECLINE_KINDS[txn.decline_kind],
                retryable=txn.retryable or txn.failure_type is FailureType.GATEWAY_UNREACHABLE,
                decline_code=txn.decline_code,
                attempt=txn.attempt,
            )
        if event.type is EventType.INVOICE_VOIDED:
            return invoice_pb2.InvoiceVoided(invoice=facts, reason=event.extra.get("reason", ""))
        assert event.type is EventType.INVOICE_UNCOLLECTIBLE
        return invoice_pb2.InvoiceUncollectible(invoice=facts, written_off=money_pb(invoice.amount_due))

    def _run_message(self, event: Event, run: Run) -> Message:
        kind = RUN_KINDS[run.kind]
        if event.type is EventType.RUN_STARTED:
            return run_pb2.RunStarted(
                run_id=run.run_id, billing_date=date_pb(run.billing_date), kind=kind, due=event.extra["due"]
            )
        if event.type is EventType.RUN_COMPLETED:
            return run_pb2.RunCompleted(
                run_id=run.run_id,
                billing_date=date_pb(run.billing_date),
                kind=kind,
                counts=_counts(run.counts),
            )
        if event.type is EventType.RUN_STALLED:
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
        assert event.type is EventType.RUN_HALTED
        return run_pb2.RunHalted(
            run_id=run.run_id,
            billing_date=date_pb(run.billing_date),
            kind=kind,
            gateway=event.extra["gateway"],
            deferred_items=event.extra["deferred"],
        )


def _counts(c: RunCounts) -> run_pb2.RunCounts:
    return run_pb2.RunCounts(
        due=c.due, charged=c.charged, failed=c.failed, skipped=c.skipped, deferred=c.deferred, parked=c.parked
    )
