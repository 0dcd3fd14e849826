"""Invoices after they are opened: dunning's retries, async payment outcomes, voiding, write-offs,
account credit and the ledger's views."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

from billing_common.clock import Clock
from billing_common.errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable, Violations
from billing_common.idempotency import IdempotencyKey
from billing_common.money import Money
from billing_common.paging import Page, PageRequest
from recurring.app.charging import Charging
from recurring.app.ports import InvoiceFilter, LedgerLine, Store, Tx
from recurring.app.settling import apply, books_for_invoices, new_id
from recurring.domain import ledger
from recurring.domain.invoicing import Invoice, Transaction
from recurring.domain.payments import ChargeResult, NoAnswer, outcome_of
from recurring.domain.settlement import (
    Answer,
    Change,
    Rules,
    next_attempt,
    retry_refusal,
    settle,
    settle_refund,
    settle_return,
    void,
    write_off,
)
from recurring.domain.status import InvoiceStatus
from recurring.domain.subscription import Cause

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PaymentUpdate:
    """What a payment.* event says about one of our charges."""

    payment_id: str
    idempotency_key: str
    result: ChargeResult


@dataclass(frozen=True)
class ExhaustionPolicy:
    """What dunning.exhausted does to the subscription when the event names no action."""

    default_cancel: bool
    cancel_merchants: frozenset[str]

    def cancels(self, merchant_id: str, action: str) -> bool:
        if action:
            return action == "cancel"
        return self.default_cancel or merchant_id in self.cancel_merchants


class Invoices:
    def __init__(
        self, store: Store, charging: Charging, clock: Clock, policy: ExhaustionPolicy, rules: Rules
    ) -> None:
        self._store = store
        self._charging = charging
        self._clock = clock
        self._policy = policy
        self._rules = rules

    async def get(self, invoice_id: str) -> tuple[Invoice, list[Transaction]]:
        async with self._store.transaction() as tx:
            invoice = await _invoice(tx, invoice_id)
            return invoice, await tx.transactions(invoice_id)

    async def page(
        self, where: InvoiceFilter, page: PageRequest[int]
    ) -> Page[tuple[Invoice, list[Transaction]], int]:
        async with self._store.transaction() as tx:
            cut = page.cut(await tx.list_invoices(where, page.after, page.limit), lambda row: row[0])
            found = [(invoice, await tx.transactions(invoice.invoice_id)) for _, invoice in cut.items]
        return Page(found, cut.next_after)

    async def retry_payment(self, invoice_id: str, key: str) -> tuple[Invoice, Transaction, bool]:
        """Charge an open invoice once per key (dunning's "<case id>:<attempt>")."""
        violations = Violations()
        violations.check(bool(invoice_id), "invoice_id", "required")
        violations.check(bool(key), "idempotency_key", "required")
        violations.raise_if_any()
        async with self._store.transaction() as tx:
            txn = await tx.transaction_by_retry_key(key)
            if txn is not None and txn.invoice_id != invoice_id:
                raise FailedPrecondition(f"idempotency key {key!r} was used for another invoice")
            invoice = await _invoice(tx, invoice_id, lock=True)
            if txn is not None and txn.answered:
                return invoice, txn, True
            if txn is None:
                attempts = await tx.transactions(invoice_id)
                refusal = retry_refusal(invoice, attempts)
                if refusal:
                    raise FailedPrecondition(refusal)
                txn = next_attempt(invoice, attempts, self._clock.now(), new_id, retry_key=key)
                await apply(tx, Change(attempts=[txn]), self._clock.now())
            sub = await tx.load_subscription(invoice.subscription_id)
            assert sub is not None
        result = await self._charging.send(txn, sub)
        answered = not isinstance(result, NoAnswer)
        log.info(
            "retry charge answered" if answered else "retry charge got no answer",
            extra={
                "invoice_id": invoice_id,
                "attempt": txn.attempt,
                "outcome": outcome_of(result).value if not isinstance(result, NoAnswer) else "no_answer",
                "decline_code": result.decline_code if not isinstance(result, NoAnswer) else result.code,
            },
        )
        if isinstance(result, NoAnswer):
            raise Unavailable("the payment service did not answer; retry with the same key")
        await self._settle([Answer(txn, result)], Cause("dunning"))
        async with self._store.transaction() as tx:
            invoice = await _invoice(tx, invoice_id)
            recorded = next(
                t for t in await tx.transactions(invoice_id) if t.transaction_id == txn.transaction_id
            )
        return invoice, recorded, False

    async def void(self, invoice_id: str, reason: str, idem: IdempotencyKey) -> Invoice:
        async with self._store.transaction() as tx:
            if idem.key and await tx.claim_key(idem) is not None:
                return await _invoice(tx, invoice_id)
            invoice = await _invoice(tx, invoice_id, lock=True)
            now = self._clock.now()
            change = void(invoice, await tx.transactions(invoice_id), reason, now)
            await apply(tx, change, now)
            if idem.key:
                await tx.complete_key(idem, invoice_id)
            return dataclasses.replace(invoice, status=InvoiceStatus.VOID)

    async def _settle(self, answers: list[Answer], cause: Cause, tx: Tx | None = None) -> None:
        """Settle charge answers through the one calculator and applicator, in `tx` when given."""
        if tx is None:
            async with self._store.transaction() as own:
                await self._settle(answers, cause, own)
            return
        now = self._clock.now()
        books = await books_for_invoices(tx, [answer.attempt.invoice_id for answer in answers])
        await apply(tx, settle(answers, books, self._rules, cause, now), now)

    async def on_payment_outcome(self, tx: Tx, update: PaymentUpdate) -> None:
        """payment.settled / payment.reconciled: the final word on a pending or unknown charge."""
        txn = await tx.transaction_for_payment(update.payment_id, update.idempotency_key)
        if txn is None:
            return
        await self._settle([Answer(txn, update.result, final_word=True)], Cause("gateway-adapter"), tx)

    async def on_payment_returned(self, tx: Tx, update: PaymentUpdate, event_id: str) -> None:
        """An ACH debit came back: the money leaves again and the invoice goes to dunning."""
        txn = await tx.transaction_for_payment(update.payment_id, update.idempotency_key)
        if txn is None:
            return
        now = self._clock.now()
        books = await books_for_invoices(tx, [txn.invoice_id])
        cause = Cause("gateway-adapter", event_id, "returned")
        await apply(tx, settle_return(txn, update.result, books, cause, now), now)

    async def on_payment_refunded(
        self, tx: Tx, update: PaymentUpdate, refund_id: str, refunded_total: Money
    ) -> None:
        """payment.refunded (full or partial): the ledger and the invoice show what went back."""
        txn = await tx.transaction_for_payment(update.payment_id, update.idempotency_key)
        if txn is None:
            return
        books = await books_for_invoices(tx, [txn.invoice_id])
        await apply(tx, settle_refund(txn, refund_id, refunded_total, books), self._clock.now())

    async def on_dunning_exhausted(self, tx: Tx, invoice_id: str, action: str, event_id: str) -> None:
        """Write the invoice off and suspend or cancel the subscription, as the merchant's policy says."""
        invoice = await tx.load_invoice(invoice_id, lock=True)
        if invoice is None:
            return
        sub = await tx.load_subscription(invoice.subscription_id, lock=True)
        cancels = sub is not None and self._policy.cancels(sub.merchant_id, action)
        cause = Cause("dunning", event_id, "dunning exhausted")
        now = self._clock.now()
        await apply(tx, write_off(invoice, sub, cancels, cause, now), now)

    async def add_credit(
        self, account_id: str, amount: Money | None, reason: str, idem: IdempotencyKey
    ) -> Money:
        violations = Violations()
        violations.check(bool(account_id), "account_id", "required")
        violations.check(amount is not None and amount.amount_minor > 0, "amount", "must be positive")
        violations.check(bool(idem.key), "idempotency_key", "required")
        violations.raise_if_any()
        assert amount is not None
        async with self._store.transaction() as tx:
            if await tx.claim_key(idem) is None:
                reference = f"credit:{idem.key}" + (f" ({reason})" if reason else "")
                await tx.post(ledger.credit_posting(account_id, reference, amount), self._clock.now())
                await tx.complete_key(idem, account_id)
            _, available = await tx.balances(account_id, amount.currency)
        return available

    async def balance(self, account_id: str, currency: str) -> tuple[Money, Money]:
        violations = Violations()
        violations.check(bool(account_id), "account_id", "required")
        violations.check(bool(currency), "currency", "required")
        violations.raise_if_any()
        async with self._store.transaction() as tx:
            return await tx.balances(account_id, currency)

    async def ledger_entries(self, account_id: str, page: PageRequest[int]) -> Page[LedgerLine, int]:
        if not account_id:
            raise InvalidArgument.of("account_id", "required")
        async with self._store.transaction() as tx:
            lines = await tx.ledger_lines(account_id, page.after, page.limit)
        return page.cut(lines, lambda line: line.entry_id)

    async def unbalanced_ledger_transactions(self) -> list[str]:
        async with self._store.transaction() as tx:
            return await tx.unbalanced_ledger_transactions()


async def _invoice(tx: Tx, invoice_id: str, *, lock: bool = False) -> Invoice:
    invoice = await tx.load_invoice(invoice_id, lock=lock)
    if invoice is None:
        raise NotFound(f"invoice {invoice_id} does not exist")
    return invoice
