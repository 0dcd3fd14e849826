"""The read side: queries that only read and map, for the servicer's Get and List calls. No use case
decides anything on a read, so these go from the repositories straight to domain objects."""

from __future__ import annotations

from billing_common.errors import existing
from billing_common.money import Money
from billing_common.paging import Page, PageRequest
from recurring.adapters.store import PostgresStore
from recurring.domain import ledger
from recurring.domain.invoicing import Invoice, InvoiceFilter, Transaction
from recurring.domain.ledger import LedgerLine
from recurring.domain.runs import Run, RunItem
from recurring.domain.subscription import HistoryEntry, Subscription, SubscriptionFilter


class Views:
    def __init__(self, store: PostgresStore) -> None:
        self._store = store

    async def subscription(self, subscription_id: str) -> Subscription:
        async with self._store.transaction() as uow:
            return existing(await uow.subscriptions.load([subscription_id]), subscription_id, "subscription")

    async def subscriptions(
        self, where: SubscriptionFilter, page: PageRequest[str]
    ) -> Page[Subscription, str]:
        async with self._store.transaction() as uow:
            subs = await uow.subscriptions.page(where, page.after, page.limit)
        return page.cut(subs, lambda sub: sub.subscription_id)

    async def history(self, subscription_id: str) -> list[HistoryEntry]:
        async with self._store.transaction() as uow:
            existing(await uow.subscriptions.load([subscription_id]), subscription_id, "subscription")
            return (await uow.subscriptions.histories([subscription_id])).get(subscription_id, [])

    async def runs(self, page: PageRequest[int]) -> Page[Run, int]:
        """Newest first; the cursor is the sequence number of the last run listed (0: the newest)."""
        async with self._store.transaction() as uow:
            cut = page.cut(await uow.runs.page(page.after, page.limit), lambda row: row[0])
        return Page([run for _, run in cut.items], cut.next_after)

    async def run_items(self, run_id: str, page: PageRequest[int]) -> Page[RunItem, int]:
        """A run's items in the order they were queued; the cursor is the last item's id."""
        async with self._store.transaction() as uow:
            existing(await uow.runs.load([run_id]), run_id, "run")
            return page.cut(await uow.items.page(run_id, page.after, page.limit), lambda item: item.item_id)

    async def invoice(self, invoice_id: str) -> tuple[Invoice, list[Transaction]]:
        """The invoice with its charge attempts."""
        async with self._store.transaction() as uow:
            invoice = existing(await uow.invoices.load([invoice_id]), invoice_id, "invoice")
            attempts = await uow.invoices.attempts_of([invoice_id])
        return invoice, attempts.get(invoice_id, [])

    async def invoices(
        self, where: InvoiceFilter, page: PageRequest[int]
    ) -> Page[tuple[Invoice, list[Transaction]], int]:
        async with self._store.transaction() as uow:
            cut = page.cut(await uow.invoices.page(where, page.after, page.limit), lambda row: row[0])
            attempts = await uow.invoices.attempts_of([invoice.invoice_id for _, invoice in cut.items])
        listed = [(invoice, attempts.get(invoice.invoice_id, [])) for _, invoice in cut.items]
        return Page(listed, cut.next_after)

    async def balance(self, account_id: str, currency: str) -> tuple[Money, Money]:
        """(balance, credit available) of an account in one currency."""
        ledger.check_account(account_id, currency)
        async with self._store.transaction() as uow:
            return await uow.ledger.balances(account_id, currency)

    async def ledger_entries(self, account_id: str, page: PageRequest[int]) -> Page[LedgerLine, int]:
        ledger.check_entries_of(account_id)
        async with self._store.transaction() as uow:
            lines = await uow.ledger.lines(account_id, page.after, page.limit)
        return page.cut(lines, lambda line: line.entry_id)
