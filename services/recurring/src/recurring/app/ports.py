"""What the use cases need from the outside world, as protocols the adapters implement."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Protocol

import asyncpg

from billing_common.errors import BillingError
from billing_common.idempotency import IdempotencyKey
from billing_common.locks import Lease
from billing_common.money import Money
from recurring.domain.events import Event
from recurring.domain.invoicing import Invoice, PeriodUsage, Transaction
from recurring.domain.ledger import Posting
from recurring.domain.payments import (
    ChargeRequest,
    ChargeResult,
    NoAnswer,
)
from recurring.domain.runs import (
    AfterFailure,
    ItemResult,
    Progress,
    Run,
    RunCounts,
    RunKind,
    RunState,
    WorkItem,
)
from recurring.domain.schedule import Frequency
from recurring.domain.status import InvoiceStatus, SubscriptionStatus
from recurring.domain.subscription import HistoryEntry, Subscription


@dataclass(frozen=True)
class PlanInfo:
    code: str
    version: int
    name: str
    price: Money
    frequency: Frequency
    trial_days: int


@dataclass(frozen=True)
class SubscriptionFilter:
    account_id: str = ""
    status: SubscriptionStatus | None = None
    frequency: Frequency | None = None


@dataclass(frozen=True)
class InvoiceFilter:
    subscription_id: str = ""
    account_id: str = ""
    status: InvoiceStatus | None = None


@dataclass(frozen=True)
class LedgerLine:
    entry_id: int
    ledger_transaction_id: str
    account: str
    amount: Money
    kind: str
    reference: str
    created_at: datetime


class BooksTx(Protocol):
    """What settlement reads and writes in one transaction: work items, subscriptions, invoices and
    their attempts, the ledger and the outbox (set-wise)."""

    async def held_items(self, items: Sequence[WorkItem]) -> set[int]:
        """Lock the items; the ids of those this claim still owns."""
        ...

    async def load_subscriptions(
        self, subscription_ids: Sequence[str], *, lock: bool = False
    ) -> dict[str, Subscription]:
        """By id; missing ones are left out."""
        ...

    async def invoices_for_occurrences(self, occurrence_keys: Sequence[str]) -> dict[str, Invoice]:
        """By occurrence key, without lines."""
        ...

    async def load_invoices(self, invoice_ids: Sequence[str]) -> dict[str, Invoice]:
        """Locked, with lines, by id."""
        ...

    async def transactions_of(self, invoice_ids: Sequence[str]) -> dict[str, list[Transaction]]:
        """Every attempt of each invoice, in attempt order."""
        ...

    async def prorations_of(
        self, subscription_ids: Sequence[str]
    ) -> dict[str, list[tuple[int, str, Money]]]: ...
    async def credits(self, customers: Sequence[tuple[str, str]]) -> dict[tuple[str, str], Money]:
        """Credit available to each (customer, currency)."""
        ...

    async def unpaid_invoices_of(self, subscription_ids: Sequence[str]) -> dict[str, int]:
        """Open or failed invoices per subscription; those with none are left out."""
        ...

    async def insert_invoices(self, invoices: Sequence[Invoice]) -> None: ...
    async def attach_prorations_to(self, ids_by_invoice: Mapping[str, Sequence[int]]) -> None: ...
    async def insert_transactions(self, txns: Sequence[Transaction]) -> None: ...
    async def save_transactions(self, txns: Sequence[Transaction]) -> None: ...
    async def set_invoice_statuses(
        self, invoice_ids: Sequence[str], status: InvoiceStatus, paid_at: datetime | None = None
    ) -> None: ...
    async def set_invoice_refunds(self, refunded: Mapping[str, int]) -> None:
        """The refunded total of each invoice, by id."""
        ...

    async def post_all(self, postings: Sequence[Posting], at: datetime) -> None: ...
    async def save_subscriptions(self, subs: Sequence[Subscription]) -> None: ...
    async def add_histories(self, entries: Sequence[HistoryEntry]) -> None: ...
    async def finish_items(self, results: Sequence[ItemResult]) -> None: ...
    async def defer_items(self, deferrals: Sequence[tuple[WorkItem, timedelta, str]]) -> None:
        """Let each item wait its delay, with its detail, unless its claim was lost."""
        ...

    async def record_failures(self, failures: Sequence[tuple[WorkItem, AfterFailure, str]]) -> list[WorkItem]:
        """Count a failure of ours per item: park it or let it wait; returns the items parked now
        (an item whose claim was lost is left alone)."""
        ...

    async def emit_all(self, events: Sequence[Event], traces: Sequence[Mapping[str, str]] = ()) -> None: ...


class Tx(BooksTx, Protocol):
    """One database transaction: every write of a use case commits (or not) together."""

    async def claim_key(self, idem: IdempotencyKey) -> str | None:
        """None when the key is new; else the earlier call's answer (see billing_common.idempotency)."""
        ...

    async def complete_key(self, idem: IdempotencyKey, answer: str) -> None: ...
    async def check_fence(self, lease: Lease) -> None: ...
    async def emit(self, event: Event) -> None: ...
    async def insert_subscription(self, sub: Subscription) -> None: ...
    async def load_subscription(self, subscription_id: str, *, lock: bool = False) -> Subscription | None: ...
    async def save_subscription(self, sub: Subscription) -> None: ...
    async def list_subscriptions(
        self, where: SubscriptionFilter, after: str, limit: int
    ) -> list[Subscription]: ...
    async def tier_mapped_subscriptions(self, account_id: str) -> list[str]: ...
    async def add_history(self, entry: HistoryEntry) -> None: ...
    async def history(self, subscription_id: str) -> list[HistoryEntry]: ...
    async def add_proration(self, subscription_id: str, description: str, amount: Money) -> None: ...
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
    async def release_claims(self, claimant: str) -> int:
        """Hand back the items still claimed under tokens starting with `claimant`; how many."""
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

    async def load_invoice(self, invoice_id: str, *, lock: bool = False) -> Invoice | None: ...
    async def list_invoices(
        self, where: InvoiceFilter, after: int, limit: int
    ) -> list[tuple[int, Invoice]]: ...
    async def transactions(self, invoice_id: str) -> list[Transaction]: ...
    async def transaction_by_retry_key(self, retry_key: str) -> Transaction | None: ...
    async def transaction_for_payment(self, payment_id: str, idempotency_key: str) -> Transaction | None: ...

    async def post(self, posting: Posting, at: datetime) -> None: ...
    async def balances(self, customer: str, currency: str) -> tuple[Money, Money]:
        """(balance: receivable plus credit accounts, credit available) of a customer."""
        ...

    async def ledger_lines(self, customer: str, after: int, limit: int) -> list[LedgerLine]: ...
    async def unbalanced_ledger_transactions(self) -> list[str]: ...


class Store(Protocol):
    def transaction(self) -> AbstractAsyncContextManager[Tx]: ...
    def within(self, conn: asyncpg.Connection) -> Tx:
        """The transaction an event handler already runs in (the inbox's)."""
        ...


@dataclass(frozen=True)
class UsagePeriod:
    """A tenant's usage to bill: [start, end)."""

    tenant: str
    start: datetime
    end: datetime


class Quota(Protocol):
    async def get_plan(self, code: str, version: int = 0) -> PlanInfo: ...
    async def usages(self, periods: Sequence[UsagePeriod]) -> list[PeriodUsage | BillingError]:
        """One answer per period, in order: its billable usage and add-ons, or why quota gave none
        (raises when the call as a whole failed)."""
        ...

    async def plan_for_tier(self, tier: str) -> str | None: ...


class Gateway(Protocol):
    """gateway-adapter: it routes each charge to a gateway and paces it under that gateway's limit.
    A refusal of the request comes back as a failed result (`domain.payments.refusal`); NoAnswer
    when there was no word about the payment (or back-pressure: send the same key again later)."""

    async def charge(self, request: ChargeRequest) -> ChargeResult | NoAnswer:
        """One charge someone waits for, in the interactive lane."""
        ...

    async def charge_batch(self, requests: Sequence[ChargeRequest]) -> list[ChargeResult | NoAnswer]:
        """A run's charges, in the batch lane; one answer per request, in order."""
        ...


class OutageCounter(Protocol):
    """Consecutive unreachable results per run and gateway, shared by every pod."""

    async def unreachable(self, run_id: str, gateway: str) -> int: ...
    async def reachable(self, run_id: str, gateway: str) -> None: ...
