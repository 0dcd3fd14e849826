"""Invoices after they are opened: dunning's retries, async payment outcomes and refunds, voiding,
write-offs and account credit; each decided by domain.settlement and written by the one applicator."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

import asyncpg

from billing_common.clock import Clock
from billing_common.errors import Unavailable, existing
from billing_common.idempotency import IdempotencyKey
from billing_common.money import Money
from billing_common.subscriptions import ExhaustedAction
from recurring.app.ports import Gateway, Store, UnitOfWork
from recurring.app.settling import apply, books_for_invoices, new_id
from recurring.domain import ledger
from recurring.domain.invoicing import Transaction
from recurring.domain.payments import ChargeResult, NoAnswer, PaymentUpdate
from recurring.domain.settlement import (
    Answer,
    Books,
    Change,
    ExhaustionPolicy,
    Rules,
    charge_request,
    check_retry,
    retry,
    settle,
    settle_refund,
    settle_return,
    void,
    write_off,
)
from recurring.domain.subscription import Cause

# What a charge attempt's news changes, decided from the books of its invoice as they are now.
Decide = Callable[[Transaction, Books, datetime], Change]


class Invoices:
    def __init__(
        self, store: Store, gateway: Gateway, clock: Clock, policy: ExhaustionPolicy, rules: Rules
    ) -> None:
        self._store = store
        self._gateway = gateway
        self._clock = clock
        self._policy = policy
        self._rules = rules

    async def retry_payment(self, invoice_id: str, key: str) -> tuple[str, bool]:
        """Charge an open invoice once per key (dunning's "<case id>:<attempt>"); the id of the
        attempt, and whether it was answered before (the key was sent again)."""
        check_retry(invoice_id, key)
        now = self._clock.now()
        async with self._store.transaction() as uow:
            books = await books_for_invoices(uow, [invoice_id])
            invoice = existing(books.invoices, invoice_id, "invoice")
            earlier = (await uow.invoices.by_retry_keys([key])).get(key)
            retrying = retry(earlier, invoice, books.attempts.get(invoice_id, []), key, now, new_id)
            if retrying.replayed:
                return retrying.attempt.transaction_id, True
            await apply(uow, retrying.change, now)
            sub = existing(books.subscriptions, invoice.subscription_id, "subscription")
        attempt = retrying.attempt
        result = await self._gateway.charge(charge_request(attempt, sub))
        if isinstance(result, NoAnswer):
            raise Unavailable("the payment service did not answer; retry with the same key")
        async with self._store.transaction() as uow:
            await self._settle(uow, attempt, self._answered(result, Cause("dunning")))
        return attempt.transaction_id, False

    async def void(self, invoice_id: str, reason: str, idem: IdempotencyKey) -> None:
        """Void an unpaid invoice; a key seen before changes nothing."""
        async with self._store.transaction() as uow:
            if idem.key and await uow.keys.claim(idem) is not None:
                return
            now = self._clock.now()
            await apply(uow, void(invoice_id, await books_for_invoices(uow, [invoice_id]), reason, now), now)
            if idem.key:
                await uow.keys.complete(idem, invoice_id)

    async def add_credit(
        self, account_id: str, amount: Money | None, reason: str, idem: IdempotencyKey
    ) -> Money:
        """Grant account credit once per key; the credit available after it."""
        credit = ledger.check_credit(account_id, amount, idem.key)
        async with self._store.transaction() as uow:
            if await uow.keys.claim(idem) is None:
                granted = ledger.granted_credit(account_id, idem.key, reason, credit)
                await apply(uow, Change(postings=[granted]), self._clock.now())
                await uow.keys.complete(idem, account_id)
            _, available = await uow.ledger.balances(account_id, credit.currency)
        return available

    # ------------------------------------------------------------ events, in the inbox's transaction

    async def on_payment_outcome(self, conn: asyncpg.Connection, update: PaymentUpdate) -> None:
        """payment.settled / payment.reconciled: the final word on a pending or unknown charge."""
        decide = self._answered(update.result, Cause("gateway-adapter"), final_word=True)
        await self._on_payment(conn, update, decide)

    async def on_payment_returned(
        self, conn: asyncpg.Connection, update: PaymentUpdate, event_id: str
    ) -> None:
        """An ACH debit came back: the money leaves again and the invoice goes to dunning."""
        cause = Cause("gateway-adapter", event_id, "returned")
        await self._on_payment(
            conn, update, lambda attempt, books, now: settle_return(attempt, update.result, books, cause, now)
        )

    async def on_payment_refunded(
        self, conn: asyncpg.Connection, update: PaymentUpdate, refund_id: str, refunded_total: Money
    ) -> None:
        """payment.refunded (full or partial): the ledger and the invoice show what went back."""
        await self._on_payment(
            conn, update, lambda attempt, books, _: settle_refund(attempt, refund_id, refunded_total, books)
        )

    async def on_dunning_exhausted(
        self, conn: asyncpg.Connection, invoice_id: str, action: ExhaustedAction | None, event_id: str
    ) -> None:
        """Write the invoice off and suspend or cancel the subscription, as the merchant's policy says."""
        uow = self._store.within(conn)
        books = await books_for_invoices(uow, [invoice_id])
        cause = Cause("dunning", event_id, "dunning exhausted")
        now = self._clock.now()
        await apply(uow, write_off(invoice_id, books, self._policy, action, cause, now), now)

    async def _on_payment(self, conn: asyncpg.Connection, update: PaymentUpdate, decide: Decide) -> None:
        """A payment event's news of the attempt it is about (none found: not a charge of ours)."""
        uow = self._store.within(conn)
        attempt = await uow.invoices.find_for_payment(update.payment_id, update.idempotency_key)
        if attempt is not None:
            await self._settle(uow, attempt, decide)

    async def _settle(self, uow: UnitOfWork, attempt: Transaction, decide: Decide) -> None:
        now = self._clock.now()
        await apply(uow, decide(attempt, await books_for_invoices(uow, [attempt.invoice_id]), now), now)

    def _answered(self, result: ChargeResult, cause: Cause, *, final_word: bool = False) -> Decide:
        """A charge's answer, settled through the one calculator."""
        return lambda attempt, books, now: settle(
            [Answer(attempt, result, final_word=final_word)], books, self._rules, cause, now
        )
