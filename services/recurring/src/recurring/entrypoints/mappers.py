"""Protobuf <-> domain for the RecurringService contract."""

from __future__ import annotations

import json
from datetime import date

from google.protobuf.message import Message

from billing.common.v1 import common_pb2
from billing.recurring.v1 import recurring_pb2 as pb
from billing_common.errors import InvalidArgument
from billing_common.protos import FREQUENCIES, METHOD_TYPES, money_pb
from recurring.adapters.codec import (
    DECLINE_KINDS_OR_NONE,
    FAILURE_TYPES_OR_NONE,
    INVOICE_STATUSES,
    LINE_KINDS,
    PAYMENT_STATUSES,
    RUN_ITEM_STATUSES,
    RUN_KINDS,
    RUN_STATES,
    SUBSCRIPTION_STATUSES,
)
from recurring.domain.invoicing import Invoice, Transaction
from recurring.domain.ledger import LedgerLine
from recurring.domain.runs import Run, RunItem, progress_per_mille
from recurring.domain.subscription import HistoryEntry, PaymentMethod, Subscription


def to_date(message: common_pb2.Date, field: str) -> date:
    try:
        return date(message.year, message.month, message.day)
    except ValueError:
        raise InvalidArgument.of(field, "is not a calendar date") from None


def optional_date(parent: Message, name: str, field: str) -> date | None:
    return to_date(getattr(parent, name), field) if parent.HasField(name) else None


def payment_method(message: common_pb2.PaymentMethod, field: str) -> PaymentMethod:
    method_type = METHOD_TYPES.get(message.type, None)
    if method_type is None:
        raise InvalidArgument.of(f"{field}.type", "must be CARD, ACH or STRIPE")
    if not message.gateway_token:
        raise InvalidArgument.of(f"{field}.gateway_token", "required")
    return PaymentMethod(method_type, message.gateway_token)


def date_pb(day: date | None) -> common_pb2.Date | None:
    return None if day is None else common_pb2.Date(year=day.year, month=day.month, day=day.day)


def subscription_pb(sub: Subscription) -> pb.Subscription:
    message = pb.Subscription(
        subscription_id=sub.subscription_id,
        account_id=sub.account_id,
        merchant_id=sub.merchant_id,
        status=SUBSCRIPTION_STATUSES.pb(sub.status),
        plan_code=sub.plan_code,
        plan_version=sub.plan_version,
        amount=money_pb(sub.amount),
        frequency=FREQUENCIES.pb(sub.frequency),
        start_date=date_pb(sub.start_date),
        billing_anchor_day=sub.anchor_day,
        payment_method=common_pb2.PaymentMethod(
            type=METHOD_TYPES.pb(sub.payment_method.type), gateway_token=sub.payment_method.token
        ),
        trial_days=sub.trial_days,
        trial_end=date_pb(sub.trial_end),
        current_period_start=date_pb(sub.current_period_start),
        current_period_end=date_pb(sub.current_period_end),
        next_billing_date=date_pb(sub.next_billing_date),
        tier_mapped=sub.tier_mapped,
        cancel_at_period_end=sub.cancel_at_period_end,
        version=sub.version,
    )
    message.created_at.FromDatetime(sub.created_at)
    message.updated_at.FromDatetime(sub.updated_at)
    return message


def history_pb(entry: HistoryEntry) -> pb.HistoryEntry:
    message = pb.HistoryEntry(
        changes=[
            pb.FieldChange(
                field=name,
                previous_json=json.dumps(change["previous"], sort_keys=True),
                new_json=json.dumps(change["new"], sort_keys=True),
            )
            for name, change in sorted(entry.changes.items())
        ],
        actor=entry.actor,
        cause_event_id=entry.cause_event_id,
        reason=entry.reason,
    )
    message.changed_at.FromDatetime(entry.changed_at)
    return message


def transaction_pb(txn: Transaction) -> pb.Transaction:
    message = pb.Transaction(
        transaction_id=txn.transaction_id,
        attempt=txn.attempt,
        idempotency_key=txn.idempotency_key,
        payment_id=txn.payment_id,
        status=PAYMENT_STATUSES.pb(txn.status),
        failure_type=FAILURE_TYPES_OR_NONE.pb(txn.failure_type),
        decline_kind=DECLINE_KINDS_OR_NONE.pb(txn.decline_kind),
        decline_code=txn.decline_code,
        amount=money_pb(txn.amount),
    )
    message.created_at.FromDatetime(txn.created_at)
    return message


def invoice_pb(invoice: Invoice, transactions: list[Transaction]) -> pb.Invoice:
    message = pb.Invoice(
        invoice_id=invoice.invoice_id,
        subscription_id=invoice.subscription_id,
        account_id=invoice.account_id,
        merchant_id=invoice.merchant_id,
        status=INVOICE_STATUSES.pb(invoice.status),
        billing_date=date_pb(invoice.billing_date),
        period_start=date_pb(invoice.period_start),
        period_end=date_pb(invoice.period_end),
        lines=[
            pb.InvoiceLine(
                kind=LINE_KINDS.pb(line.kind),
                description=line.description,
                quantity=line.quantity,
                unit_price=common_pb2.Decimal(value=line.unit_price) if line.unit_price else None,
                amount=money_pb(line.amount),
            )
            for line in invoice.lines
        ],
        total=money_pb(invoice.total),
        amount_due=money_pb(invoice.amount_due),
        refunded=money_pb(invoice.refunded),
        transactions=[transaction_pb(t) for t in transactions],
    )
    message.created_at.FromDatetime(invoice.created_at)
    if invoice.paid_at is not None:
        message.paid_at.FromDatetime(invoice.paid_at)
    return message


def run_pb(run: Run) -> pb.Run:
    c = run.counts
    message = pb.Run(
        run_id=run.run_id,
        billing_date=date_pb(run.billing_date),
        kind=RUN_KINDS.pb(run.kind),
        state=RUN_STATES.pb(run.state),
        counts=pb.RunCounts(
            due=c.due,
            charged=c.charged,
            failed=c.failed,
            skipped=c.skipped,
            deferred=c.deferred,
            pending=c.pending,
            parked=c.parked,
        ),
        progress_per_mille=progress_per_mille(c.finished, c.due),
        dry_run=run.dry_run,
        halted_gateways=list(run.halted_gateways),
    )
    message.started_at.FromDatetime(run.started_at)
    if run.finished_at is not None:
        message.finished_at.FromDatetime(run.finished_at)
        message.duration.FromTimedelta(run.finished_at - run.started_at)
    if run.working_time is not None:
        message.working_time.FromTimedelta(run.working_time)
    return message


def ledger_entry_pb(line: LedgerLine) -> pb.LedgerEntry:
    message = pb.LedgerEntry(
        entry_id=str(line.entry_id),
        ledger_transaction_id=line.ledger_transaction_id,
        account=line.account,
        amount=money_pb(line.amount),
        kind=line.kind,
        reference=line.reference,
    )
    message.created_at.FromDatetime(line.created_at)
    return message


def run_item_pb(item: RunItem) -> pb.RunItem:
    return pb.RunItem(
        subscription_id=item.subscription_id,
        due_date=date_pb(item.due_date),
        gateway=item.gateway,
        status=RUN_ITEM_STATUSES.pb(item.status),
        reason=item.reason,
        invoice_id=item.invoice_id or "",
    )
