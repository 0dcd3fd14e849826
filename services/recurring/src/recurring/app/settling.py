"""The books the settlement calculator decides from, and the one applicator that writes its changes:
every path (a run's batch, a dunning retry, a payment event) reads and writes through here."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime

from recurring.app.ports import UnitOfWork
from recurring.domain.runs import WorkItem
from recurring.domain.settlement import Books, Change
from recurring.domain.status import InvoiceStatus


async def books_for_items(uow: UnitOfWork, items: Sequence[WorkItem]) -> Books:
    """The books of the occurrences to bill, their subscriptions locked."""
    subscription_ids = sorted({item.subscription_id for item in items})
    subscriptions = await uow.subscriptions.load(subscription_ids, lock=True)
    invoiced = await uow.invoices.for_occurrences([item.occurrence_key for item in items])
    invoices = {invoice.invoice_id: invoice for invoice in invoiced.values()}
    accounts = sorted({(sub.account_id, sub.amount.currency) for sub in subscriptions.values()})
    return Books(
        subscriptions=subscriptions,
        invoices=invoices,
        attempts=await uow.invoices.attempts_of(sorted(invoices)),
        prorations=await uow.subscriptions.open_prorations(subscription_ids),
        credits=await uow.ledger.credits(accounts),
        unpaid=await uow.invoices.unpaid_counts(subscription_ids),
    )


async def books_for_invoices(uow: UnitOfWork, invoice_ids: Sequence[str]) -> Books:
    """The books of the invoices whose charges are settled, invoices and subscriptions locked."""
    invoices = await uow.invoices.load(sorted(set(invoice_ids)), lock=True)
    subscription_ids = sorted({invoice.subscription_id for invoice in invoices.values()})
    return Books(
        subscriptions=await uow.subscriptions.load(subscription_ids, lock=True),
        invoices=invoices,
        attempts=await uow.invoices.attempts_of(sorted(invoices)),
        unpaid=await uow.invoices.unpaid_counts(subscription_ids),
    )


async def apply(
    uow: UnitOfWork, change: Change, now: datetime, traces: Mapping[int, Mapping[str, str]] | None = None
) -> list[WorkItem]:
    """Write a change set-wise; an event a run item's charge announced is stored under that
    charge's trace (`traces`, by item id). Returns the items parked by it."""
    if change.invoices:
        await uow.invoices.add(list(change.invoices.values()))
    if any(change.prorations.values()):
        await uow.subscriptions.attach_prorations(change.prorations)
    if change.new_prorations:
        await uow.subscriptions.add_prorations(change.new_prorations)
    if change.attempts:
        await uow.invoices.add_attempts(change.attempts)
    if change.answered:
        await uow.invoices.save_attempts(list(change.answered.values()))
    by_status: dict[tuple[InvoiceStatus, datetime | None], list[str]] = {}
    for invoice_id, (status, paid_at) in change.statuses.items():
        by_status.setdefault((status, paid_at), []).append(invoice_id)
    for (status, paid_at), invoice_ids in by_status.items():
        await uow.invoices.set_statuses(invoice_ids, status, paid_at)
    if change.refunded:
        await uow.invoices.set_refunds(change.refunded)
    await uow.ledger.post(change.postings, now)
    if change.subscriptions:
        await uow.subscriptions.save(list(change.subscriptions.values()))
        await uow.subscriptions.add_history(change.history)
    if change.finished:
        await uow.items.finish(change.finished)
    if change.deferred:
        await uow.items.defer(change.deferred)
    parked = await uow.items.record_failures(change.failures) if change.failures else []
    if change.events:
        found = traces or {}
        await uow.outbox.add(
            [announced.event for announced in change.events],
            [found.get(a.item_id, {}) if a.item_id is not None else {} for a in change.events],
        )
    return parked


def new_id(prefix: str) -> str:
    """A new invoice ("inv") or transaction ("txn") id."""
    return f"{prefix}_{uuid.uuid4().hex}"
