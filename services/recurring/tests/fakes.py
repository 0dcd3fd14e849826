"""In-memory books: the repositories' state as plain dictionaries, for use-case unit tests."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from billing_common.money import Money
from recurring.domain import ledger
from recurring.domain.events import Event
from recurring.domain.invoicing import Invoice, Transaction
from recurring.domain.runs import AfterFailure, ItemResult, ItemStatus, WorkItem
from recurring.domain.status import InvoiceStatus
from recurring.domain.subscription import HistoryEntry, Subscription


@dataclass
class ItemState:
    item: WorkItem
    status: ItemStatus = ItemStatus.CLAIMED
    detail: str = ""
    invoice_id: str | None = None
    failures: int = 0
    claim_token: str | None = None


@dataclass
class Proration:
    proration_id: int
    subscription_id: str
    description: str
    amount: Money
    invoice_id: str | None = None


@dataclass
class FakeBooks:
    """One unit of work over in-memory tables (what the applicator and the readers touch)."""

    subscriptions: dict[str, Subscription] = field(default_factory=dict)
    invoices: dict[str, Invoice] = field(default_factory=dict)
    attempts: dict[str, list[Transaction]] = field(default_factory=dict)
    prorations: list[Proration] = field(default_factory=list)
    postings: list[ledger.Posting] = field(default_factory=list)
    items: dict[int, ItemState] = field(default_factory=dict)
    history: list[HistoryEntry] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)

    def claim(self, items: Sequence[WorkItem]) -> None:
        for item in items:
            self.items[item.item_id] = ItemState(item, claim_token=item.claim_token)

    def held(self, item: WorkItem) -> ItemState | None:
        state = self.items.get(item.item_id)
        if state is None or state.status is not ItemStatus.CLAIMED or state.claim_token != item.claim_token:
            return None
        return state

    # ------------------------------------------------------------ reads

    async def held_items(self, items: Sequence[WorkItem]) -> set[int]:
        return {item.item_id for item in items if self.held(item) is not None}

    async def load_subscriptions(
        self, subscription_ids: Sequence[str], *, lock: bool = False
    ) -> dict[str, Subscription]:
        return {sid: self.subscriptions[sid] for sid in subscription_ids if sid in self.subscriptions}

    async def invoices_for_occurrences(self, occurrence_keys: Sequence[str]) -> dict[str, Invoice]:
        keys = set(occurrence_keys)
        return {i.occurrence_key: i for i in self.invoices.values() if i.occurrence_key in keys}

    async def load_invoices(self, invoice_ids: Sequence[str]) -> dict[str, Invoice]:
        return {iid: self.invoices[iid] for iid in invoice_ids if iid in self.invoices}

    async def transactions_of(self, invoice_ids: Sequence[str]) -> dict[str, list[Transaction]]:
        return {iid: list(self.attempts[iid]) for iid in invoice_ids if self.attempts.get(iid)}

    async def prorations_of(self, subscription_ids: Sequence[str]) -> dict[str, list[tuple[int, str, Money]]]:
        found: dict[str, list[tuple[int, str, Money]]] = {}
        for p in self.prorations:
            if p.subscription_id in subscription_ids and p.invoice_id is None:
                found.setdefault(p.subscription_id, []).append((p.proration_id, p.description, p.amount))
        return found

    async def credits(self, customers: Sequence[tuple[str, str]]) -> dict[tuple[str, str], Money]:
        return {(c, cur): self.credit(c, cur) for c, cur in customers}

    def credit(self, customer: str, currency: str) -> Money:
        account = ledger.customer_credit(customer)
        held = sum(
            e.amount.amount_minor
            for p in self.postings
            for e in p.entries
            if e.account == account and e.amount.currency == currency
        )
        return Money(-held, currency)

    async def unpaid_invoices_of(self, subscription_ids: Sequence[str]) -> dict[str, int]:
        unpaid: dict[str, int] = {}
        for invoice in self.invoices.values():
            if invoice.subscription_id in subscription_ids and invoice.status in (
                InvoiceStatus.OPEN,
                InvoiceStatus.PAYMENT_FAILED,
            ):
                unpaid[invoice.subscription_id] = unpaid.get(invoice.subscription_id, 0) + 1
        return unpaid

    # ------------------------------------------------------------ writes

    async def insert_invoices(self, invoices: Sequence[Invoice]) -> None:
        for invoice in invoices:
            assert invoice.invoice_id not in self.invoices
            assert all(i.occurrence_key != invoice.occurrence_key for i in self.invoices.values())
            self.invoices[invoice.invoice_id] = invoice

    async def attach_prorations_to(self, ids_by_invoice: Mapping[str, Sequence[int]]) -> None:
        for invoice_id, ids in ids_by_invoice.items():
            for p in self.prorations:
                if p.proration_id in ids:
                    p.invoice_id = invoice_id

    async def insert_transactions(self, txns: Sequence[Transaction]) -> None:
        for txn in txns:
            self.attempts.setdefault(txn.invoice_id, []).append(txn)

    async def save_transactions(self, txns: Sequence[Transaction]) -> None:
        for txn in txns:
            found = self.attempts[txn.invoice_id]
            index = next(i for i, t in enumerate(found) if t.transaction_id == txn.transaction_id)
            found[index] = txn

    async def set_invoice_statuses(
        self, invoice_ids: Sequence[str], status: InvoiceStatus, paid_at: datetime | None = None
    ) -> None:
        for iid in invoice_ids:
            invoice = self.invoices[iid]
            self.invoices[iid] = dataclasses.replace(
                invoice, status=status, paid_at=paid_at or invoice.paid_at
            )

    async def set_invoice_refunds(self, refunded: Mapping[str, int]) -> None:
        for iid, total in refunded.items():
            self.invoices[iid] = dataclasses.replace(self.invoices[iid], refunded_minor=total)

    async def post_all(self, postings: Sequence[ledger.Posting], at: datetime) -> None:
        self.postings += postings

    async def save_subscriptions(self, subs: Sequence[Subscription]) -> None:
        for sub in subs:
            self.subscriptions[sub.subscription_id] = sub

    async def add_histories(self, entries: Sequence[HistoryEntry]) -> None:
        self.history += entries

    async def finish_items(self, results: Sequence[ItemResult]) -> None:
        for result in results:
            state = self.held(result.item)
            if state is not None:
                state.item, state.status, state.detail = result.item, result.status, result.detail
                state.invoice_id = result.invoice_id or state.invoice_id
                state.claim_token = None

    async def defer_items(self, deferrals: Sequence[tuple[WorkItem, timedelta, str]]) -> None:
        for item, _, detail in deferrals:
            state = self.held(item)
            if state is not None:
                state.item, state.status, state.detail = item, ItemStatus.DEFERRED, detail
                state.claim_token = None

    async def record_failures(self, failures: Sequence[tuple[WorkItem, AfterFailure, str]]) -> list[WorkItem]:
        parked = []
        for item, after, detail in failures:
            state = self.held(item)
            if state is None:
                continue
            state.status = ItemStatus.PARKED if after.park else ItemStatus.DEFERRED
            state.failures, state.detail, state.claim_token = after.failures, detail, None
            if after.park:
                parked.append(item)
        return parked

    async def emit_all(self, events: Sequence[Event], traces: Sequence[Mapping[str, str]] = ()) -> None:
        self.events += events
