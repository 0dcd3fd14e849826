"""Invoices after they are opened: dunning's retries, async payment outcomes, voiding, write-offs,
account credit and the ledger's views."""

from __future__ import annotations

import logging

import asyncpg

from billing_common.clock import Clock
from billing_common.errors import NotFound, Unavailable
from billing_common.idempotency import IdempotencyKey
from billing_common.money import Money
from billing_common.subscriptions import ExhaustedAction
from recurring.app.ports import Gateway, Store, UnitOfWork
from recurring.app.settling import apply, books_for_invoices, new_id
from recurring.app.subscriptions import existing_subscription
from recurring.domain import ledger
from recurring.domain.invoicing import Invoice
from recurring.domain.payments import NoAnswer, PaymentUpdate, described
from recurring.domain.settlement import (
    Answer,
    Change,
    ExhaustionPolicy,
    Rules,
    charge_request,
    check_retry,
    earlier_retry,
    retry,
    settle,
    settle_refund,
    settle_return,
    void,
    write_off,
)
from recurring.domain.subscription import Cause

log = logging.getLogger(__name__)


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
        async with self._store.transaction() as uow:
            attempt = earlier_retry((await uow.invoices.by_retry_keys([key])).get(key), invoice_id, key)
            invoice = await _invoice(uow, invoice_id, lock=True)
            if attempt is not None and attempt.answered:
                return attempt.transaction_id, True
            if attempt is None:
                attempts = (await uow.invoices.attempts_of([invoice_id])).get(invoice_id, [])
                attempt = retry(invoice, attempts, key, self._clock.now(), new_id)
                await apply(uow, Change(attempts=[attempt]), self._clock.now())
            sub = await existing_subscription(uow, invoice.subscription_id)
        result = await self._gateway.charge(charge_request(attempt, sub))
        log.info(
            "retry charge got no answer" if isinstance(result, NoAnswer) else "retry charge answered",
            extra={"invoice_id": invoice_id, "attempt": attempt.attempt, **described(result)},
        )
        if isinstance(result, NoAnswer):
            raise Unavailable("the payment service did not answer; retry with the same key")
        async with self._store.transaction() as uow:
            await self._settle(uow, [Answer(attempt, result)], Cause("dunning"))
        return attempt.transaction_id, False

    async def void(self, invoice_id: str, reason: str, idem: IdempotencyKey) -> None:
        """Void an unpaid invoice; a key seen before changes nothing."""
        async with self._store.transaction() as uow:
            if idem.key and await uow.keys.claim(idem) is not None:
                return
            invoice = await _invoice(uow, invoice_id, lock=True)
            now = self._clock.now()
            attempts = (await uow.invoices.attempts_of([invoice_id])).get(invoice_id, [])
            await apply(uow, void(invoice, attempts, reason, now), now)
            if idem.key:
                await uow.keys.complete(idem, invoice_id)

    async def _settle(self, uow: UnitOfWork, answers: list[Answer], cause: Cause) -> None:
        """Settle charge answers through the one calculator and applicator."""
        now = self._clock.now()
        books = await books_for_invoices(uow, [answer.attempt.invoice_id for answer in answers])
        await apply(uow, settle(answers, books, self._rules, cause, now), now)

    # ------------------------------------------------------------ events, in the inbox's transaction

    async def on_payment_outcome(self, conn: asyncpg.Connection, update: PaymentUpdate) -> None:
        """payment.settled / payment.reconciled: the final word on a pending or unknown charge."""
        uow = self._store.within(conn)
        attempt = await uow.invoices.find_for_payment(update.payment_id, update.idempotency_key)
        if attempt is None:
            return
        await self._settle(uow, [Answer(attempt, update.result, final_word=True)], Cause("gateway-adapter"))

    async def on_payment_returned(
        self, conn: asyncpg.Connection, update: PaymentUpdate, event_id: str
    ) -> None:
        """An ACH debit came back: the money leaves again and the invoice goes to dunning."""
        uow = self._store.within(conn)
        attempt = await uow.invoices.find_for_payment(update.payment_id, update.idempotency_key)
        if attempt is None:
            return
        now = self._clock.now()
        books = await books_for_invoices(uow, [attempt.invoice_id])
        cause = Cause("gateway-adapter", event_id, "returned")
        await apply(uow, settle_return(attempt, update.result, books, cause, now), now)

    async def on_payment_refunded(
        self, conn: asyncpg.Connection, update: PaymentUpdate, refund_id: str, refunded_total: Money
    ) -> None:
        """payment.refunded (full or partial): the ledger and the invoice show what went back."""
        uow = self._store.within(conn)
        attempt = await uow.invoices.find_for_payment(update.payment_id, update.idempotency_key)
        if attempt is None:
            return
        books = await books_for_invoices(uow, [attempt.invoice_id])
        await apply(uow, settle_refund(attempt, refund_id, refunded_total, books), self._clock.now())

    async def on_dunning_exhausted(
        self, conn: asyncpg.Connection, invoice_id: str, action: ExhaustedAction | None, event_id: str
    ) -> None:
        """Write the invoice off and suspend or cancel the subscription, as the merchant's policy says."""
        uow = self._store.within(conn)
        invoice = (await uow.invoices.load([invoice_id], lock=True)).get(invoice_id)
        if invoice is None:
            return
        sub = (await uow.subscriptions.load([invoice.subscription_id], lock=True)).get(
            invoice.subscription_id
        )
        cause = Cause("dunning", event_id, "dunning exhausted")
        now = self._clock.now()
        await apply(uow, write_off(invoice, sub, self._policy, action, cause, now), now)

    async def add_credit(
        self, account_id: str, amount: Money | None, reason: str, idem: IdempotencyKey
    ) -> Money:
        credit = ledger.check_credit(account_id, amount, idem.key)
        async with self._store.transaction() as uow:
            if await uow.keys.claim(idem) is None:
                granted = ledger.granted_credit(account_id, idem.key, reason, credit)
                await uow.ledger.post([granted], self._clock.now())
                await uow.keys.complete(idem, account_id)
            _, available = await uow.ledger.balances(account_id, credit.currency)
        return available


async def _invoice(uow: UnitOfWork, invoice_id: str, *, lock: bool = False) -> Invoice:
    invoice = (await uow.invoices.load([invoice_id], lock=lock)).get(invoice_id)
    if invoice is None:
        raise NotFound(f"invoice {invoice_id} does not exist")
    return invoice
