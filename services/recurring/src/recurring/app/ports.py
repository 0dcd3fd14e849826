"""What the use cases need from the outside world, as protocols the adapters implement."""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any, Protocol

from billing_common.locks import Lease
from billing_common.money import Money
from recurring.domain.invoicing import InvoiceLine, UsageCharge
from recurring.domain.ledger import Posting
from recurring.domain.payments import (
    ChargeRequest,
    ChargeResult,
    DeclineKind,
    FailureType,
    NoAnswer,
    PaymentStatus,
)
from recurring.domain.runs import AfterFailure, ItemStatus, Progress, RunKind, RunState
from recurring.domain.schedule import Frequency
from recurring.domain.status import InvoiceStatus, SubscriptionStatus
from recurring.domain.subscription import Subscription


@dataclass(frozen=True)
class PlanInfo:
    code: str
    version: int
    name: str
    price: Money
    frequency: Frequency
    trial_days: int


@dataclass(frozen=True)
class HistoryEntry:
    subscription_id: str
    changes: dict[str, dict[str, Any]]
    actor: str
    cause_event_id: str
    reason: str
    changed_at: datetime


@dataclass(frozen=True)
class SubscriptionFilter:
    account_id: str = ""
    status: SubscriptionStatus | None = None
    frequency: Frequency | None = None


@dataclass(frozen=True)
class Invoice:
    invoice_id: str
    subscription_id: str
    account_id: str
    merchant_id: str
    occurrence_key: str
    status: InvoiceStatus
    billing_date: date
    period_start: date
    period_end: date
    total: Money
    credit_applied: Money
    amount_due: Money
    created_at: datetime
    paid_at: datetime | None = None
    lines: tuple[InvoiceLine, ...] = ()


@dataclass(frozen=True)
class Transaction:
    transaction_id: str
    invoice_id: str
    attempt: int
    idempotency_key: str
    retry_key: str | None
    amount: Money
    created_at: datetime
    # PENDING with no payment id: sent (or about to be) and not answered; retried with the same key.
    status: PaymentStatus = PaymentStatus.PENDING
    payment_id: str = ""
    gateway: str = ""
    failure_type: FailureType = FailureType.NONE
    decline_kind: DeclineKind = DeclineKind.NONE
    decline_code: str = ""
    retryable: bool = False
    # The trace that wrote the attempt (empty until it is stored): a later send continues it.
    trace_context: Mapping[str, str] = field(default_factory=dict, compare=False)

    @property
    def answered(self) -> bool:
        return bool(self.payment_id) or self.status is not PaymentStatus.PENDING


@dataclass(frozen=True)
class InvoiceFilter:
    subscription_id: str = ""
    account_id: str = ""
    status: InvoiceStatus | None = None


@dataclass(frozen=True)
class RunCounts:
    due: int = 0
    charged: int = 0
    failed: int = 0
    skipped: int = 0
    deferred: int = 0
    pending: int = 0
    parked: int = 0

    @property
    def finished(self) -> int:
        return self.charged + self.failed + self.skipped + self.parked


@dataclass(frozen=True)
class Run:
    run_id: str
    billing_date: date
    kind: RunKind
    state: RunState
    dry_run: bool
    started_at: datetime
    finished_at: datetime | None = None
    halted_gateways: tuple[str, ...] = ()
    counts: RunCounts = field(default_factory=RunCounts)
    progress: Progress = field(default_factory=Progress)


@dataclass(frozen=True)
class WorkItem:
    item_id: int
    run_id: str
    subscription_id: str
    due_date: date
    occurrence_key: str
    gateway: str
    claim_token: str
    # Tries that failed for a reason of ours so far (a lease that ran out counts at the claim), and
    # the last word on the item.
    failures: int = 0
    detail: str = ""
    # The trace of the run (or RunBilling call) that queued the item: its batch continues it.
    trace_context: Mapping[str, str] = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class ItemResult:
    """How a work item ends: its status, a short detail, and the invoice it produced."""

    item: WorkItem
    status: ItemStatus
    detail: str = ""
    invoice_id: str | None = None


@dataclass(frozen=True)
class LedgerLine:
    entry_id: int
    ledger_transaction_id: str
    account: str
    amount: Money
    kind: str
    reference: str
    created_at: datetime


class EventType(enum.Enum):
    SUBSCRIPTION_CREATED = "subscription.created"
    SUBSCRIPTION_ACTIVATED = "subscription.activated"
    SUBSCRIPTION_PLAN_CHANGED = "subscription.plan_changed"
    SUBSCRIPTION_PAUSED = "subscription.paused"
    SUBSCRIPTION_RESUMED = "subscription.resumed"
    SUBSCRIPTION_CANCELLED = "subscription.cancelled"
    SUBSCRIPTION_SUSPENDED = "subscription.suspended"
    SUBSCRIPTION_COMPLETED = "subscription.completed"
    SUBSCRIPTION_PAST_DUE = "subscription.past_due"
    SUBSCRIPTION_RENEWED = "subscription.renewed"
    SUBSCRIPTION_PAYMENT_METHOD_UPDATED = "subscription.payment_method_updated"
    INVOICE_CREATED = "invoice.created"
    INVOICE_PAID = "invoice.paid"
    INVOICE_PAYMENT_FAILED = "invoice.payment_failed"
    INVOICE_VOIDED = "invoice.voided"
    INVOICE_UNCOLLECTIBLE = "invoice.uncollectible"
    RUN_STARTED = "run.started"
    RUN_COMPLETED = "run.completed"
    RUN_HALTED = "run.halted"
    RUN_STALLED = "run.stalled"


@dataclass(frozen=True)
class Event:
    """A fact to publish through the outbox; the adapter turns it into the contract's message."""

    type: EventType
    subscription: Subscription | None = None
    invoice: Invoice | None = None
    run: Run | None = None
    transaction: Transaction | None = None
    # Event-specific values: previous plan, cause, reason, gateway, amounts.
    extra: dict[str, Any] = field(default_factory=dict)


class Tx(Protocol):
    """One database transaction: every write of a use case commits (or not) together."""

    async def claim_key(self, scope: str, key: str, request_hash: str) -> str | None:
        """None when the key is new; else the earlier call's result reference (same request)."""
        ...

    async def complete_key(self, scope: str, key: str, result_ref: str) -> None: ...
    async def check_fence(self, lease: Lease) -> None: ...
    async def emit(self, event: Event) -> None: ...
    async def emit_all(self, events: Sequence[Event]) -> None: ...

    async def insert_subscription(self, sub: Subscription) -> None: ...
    async def load_subscription(self, subscription_id: str, *, lock: bool = False) -> Subscription | None: ...
    async def load_subscriptions(
        self, subscription_ids: Sequence[str], *, lock: bool = False
    ) -> dict[str, Subscription]:
        """By id; missing ones are left out."""
        ...

    async def save_subscription(self, sub: Subscription) -> None: ...
    async def save_subscriptions(self, subs: Sequence[Subscription]) -> None: ...
    async def list_subscriptions(
        self, where: SubscriptionFilter, after: str, limit: int
    ) -> list[Subscription]: ...
    async def tier_mapped_subscriptions(self, account_id: str) -> list[str]: ...
    async def add_history(self, entry: HistoryEntry) -> None: ...
    async def add_histories(self, entries: Sequence[HistoryEntry]) -> None: ...
    async def history(self, subscription_id: str) -> list[HistoryEntry]: ...
    async def add_proration(self, subscription_id: str, description: str, amount: Money) -> None: ...
    async def open_prorations(self, subscription_id: str) -> list[tuple[int, str, Money]]: ...
    async def prorations_of(
        self, subscription_ids: Sequence[str]
    ) -> dict[str, list[tuple[int, str, Money]]]: ...
    async def attach_prorations(self, ids: Sequence[int], invoice_id: str) -> None: ...
    async def attach_prorations_to(self, ids_by_invoice: dict[str, Sequence[int]]) -> None: ...

    async def insert_run(self, run: Run) -> bool:
        """False when a real run of that date and kind exists already."""
        ...

    async def find_run(self, billing_date: date, kind: RunKind) -> Run | None: ...
    async def get_run(self, run_id: str, *, lock: bool = False) -> Run | None: ...
    async def list_runs(self, after: int, limit: int) -> list[tuple[int, Run]]: ...
    async def latest_run(self, kind: RunKind, not_after: date) -> Run | None:
        """The real run of the kind with the latest billing date on or before `not_after`."""
        ...

    async def set_run_state(self, run_id: str, state: RunState, finished_at: datetime | None) -> None: ...
    async def enqueue_due(self, run_id: str, billing_date: date, frequencies: Sequence[Frequency]) -> int:
        """Work items for every scheduled subscription due on or before the date; never one twice."""
        ...

    async def count_due(self, billing_date: date, frequencies: Sequence[Frequency]) -> tuple[int, int]:
        """(billable, would be skipped) subscriptions due on or before the date."""
        ...

    async def claim_items(self, limit: int, lease: timedelta, claim_token: str) -> list[WorkItem]: ...
    async def holds_item(self, item: WorkItem) -> bool:
        """Lock the item; True while this claim still owns it (its lease was not taken over)."""
        ...

    async def held_items(self, items: Sequence[WorkItem]) -> set[int]:
        """Lock the items; the ids of those this claim still owns."""
        ...

    async def finish_item(
        self, item: WorkItem, status: ItemStatus, detail: str = "", invoice_id: str | None = None
    ) -> None: ...
    async def finish_items(self, results: Sequence[ItemResult]) -> None: ...
    async def defer_item(self, item: WorkItem, delay: timedelta, detail: str) -> None: ...
    async def record_failure(self, item: WorkItem, after: AfterFailure, detail: str) -> bool:
        """Count a failure of ours: park the item or let it wait; False when the claim was lost."""
        ...

    async def requeue_parked(self, run_id: str, gateway: str) -> int:
        """Send the run's parked items of the gateway back to work, with their failures forgotten."""
        ...

    async def running_runs(self) -> list[Run]:
        """Real runs still RUNNING, oldest date first, with what the scheduler last saw of them."""
        ...

    async def save_progress(self, run_id: str, progress: Progress) -> None: ...
    async def halt_gateway(self, run_id: str, gateway: str) -> bool:
        """Add the gateway to the run's halted ones; False if it was halted already."""
        ...

    async def resume_gateway(self, run_id: str, gateway: str) -> bool: ...
    async def deferred_items(self, run_id: str, gateway: str) -> int: ...
    async def run_counts(self, run_id: str) -> RunCounts: ...
    async def open_items(self, run_id: str) -> int:
        """Items still to work: pending, claimed, or deferred on a gateway that is not halted."""
        ...

    async def invoice_for_occurrence(self, occurrence_key: str) -> Invoice | None: ...
    async def invoices_for_occurrences(self, occurrence_keys: Sequence[str]) -> dict[str, Invoice]:
        """By occurrence key, without lines."""
        ...

    async def insert_invoice(self, invoice: Invoice) -> None: ...
    async def insert_invoices(self, invoices: Sequence[Invoice]) -> None: ...
    async def load_invoice(self, invoice_id: str, *, lock: bool = False) -> Invoice | None: ...
    async def load_invoices(self, invoice_ids: Sequence[str]) -> dict[str, Invoice]:
        """Locked, with lines, by id."""
        ...

    async def set_invoice_status(
        self, invoice_id: str, status: InvoiceStatus, paid_at: datetime | None = None
    ) -> None: ...
    async def set_invoice_statuses(
        self, invoice_ids: Sequence[str], status: InvoiceStatus, paid_at: datetime | None = None
    ) -> None: ...
    async def list_invoices(
        self, where: InvoiceFilter, after: int, limit: int
    ) -> list[tuple[int, Invoice]]: ...
    async def unpaid_invoices(self, subscription_id: str) -> int: ...

    async def insert_transaction(self, txn: Transaction) -> None: ...
    async def insert_transactions(self, txns: Sequence[Transaction]) -> None: ...
    async def save_transaction(self, txn: Transaction) -> None: ...
    async def save_transactions(self, txns: Sequence[Transaction]) -> None: ...
    async def transactions(self, invoice_id: str) -> list[Transaction]: ...
    async def transactions_of(self, invoice_ids: Sequence[str]) -> dict[str, list[Transaction]]:
        """Every attempt of each invoice, in attempt order."""
        ...

    async def transaction_by_retry_key(self, retry_key: str) -> Transaction | None: ...
    async def transaction_for_payment(self, payment_id: str, idempotency_key: str) -> Transaction | None: ...

    async def post(self, posting: Posting, at: datetime) -> None: ...
    async def post_all(self, postings: Sequence[Posting], at: datetime) -> None: ...
    async def credits(self, customers: Sequence[tuple[str, str]]) -> dict[tuple[str, str], Money]:
        """Credit available to each (customer, currency)."""
        ...

    async def balances(self, customer: str, currency: str) -> tuple[Money, Money]:
        """(balance: receivable plus credit accounts, credit available) of a customer."""
        ...

    async def ledger_lines(self, customer: str, after: int, limit: int) -> list[LedgerLine]: ...
    async def unbalanced_ledger_transactions(self) -> list[str]: ...


class Store(Protocol):
    def transaction(self) -> AbstractAsyncContextManager[Tx]: ...
    def within(self, conn: Any) -> Tx:
        """The transaction an event handler already runs in (the inbox's)."""
        ...


class Quota(Protocol):
    async def get_plan(self, code: str, version: int = 0) -> PlanInfo: ...
    async def usage(self, tenant: str, start: datetime, end: datetime) -> list[UsageCharge]: ...
    async def plan_for_tier(self, tier: str) -> str | None: ...


class ChargeNotAnswered(Exception):
    """The call to the payment service came back without a word about the payment."""

    def __init__(self, answer: NoAnswer) -> None:
        super().__init__(answer.reason)
        self.answer = answer


class Gateway(Protocol):
    async def charge(self, request: ChargeRequest) -> ChargeResult:
        """A refusal of the request comes back as a failed result (`domain.payments.refusal`);
        raises ChargeNotAnswered when there was no answer about the payment."""
        ...


class Pacer(Protocol):
    """Charges per second per gateway, shared by every pod."""

    async def wait_turn(self, gateway: str) -> None: ...


class OutageCounter(Protocol):
    """Consecutive unreachable results per run and gateway, shared by every pod."""

    async def unreachable(self, run_id: str, gateway: str) -> int: ...
    async def reachable(self, run_id: str, gateway: str) -> None: ...
