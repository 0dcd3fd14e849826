"""Invoices after they are opened: dunning's retries, async payment outcomes, voiding, write-offs,
account credit and the ledger's views."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

from billing_common.clock import Clock
from billing_common.errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable, Violations
from billing_common.money import Money
from billing_common.paging import Page, PageRequest
from recurring.app.charging import Charging, awaiting_result
from recurring.app.ports import Event, EventType, Invoice, InvoiceFilter, LedgerLine, Store, Transaction, Tx
from recurring.app.subscriptions import Cause, IdempotencyRef, cancelled, save_with_history
from recurring.domain import ledger
from recurring.domain.payments import ChargeResult, FailureType, NoAnswer, PaymentStatus, outcome_of
from recurring.domain.status import Action, InvoiceStatus, can, invoice_transition

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
    def __init__(self, store: Store, charging: Charging, clock: Clock, policy: ExhaustionPolicy) -> None:
        self._store = store
        self._charging = charging
        self._clock = clock
        self._policy = policy

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
                if invoice.status not in (InvoiceStatus.OPEN, InvoiceStatus.PAYMENT_FAILED):
                    raise FailedPrecondition(f"the invoice is {invoice.status.value}")
                attempts = await tx.transactions(invoice_id)
                if attempts and (not attempts[-1].answered or awaiting_result(attempts[-1])):
                    raise FailedPrecondition("a charge of this invoice is still waiting for its outcome")
                txn = await self._charging.new_attempt(tx, invoice, retry_key=key)
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
        async with self._store.transaction() as tx:
            await self._charging.record(tx, txn, result, Cause("dunning"))
            invoice = await _invoice(tx, invoice_id)
            recorded = next(
                t for t in await tx.transactions(invoice_id) if t.transaction_id == txn.transaction_id
            )
        return invoice, recorded, False

    async def void(self, invoice_id: str, reason: str, idem: IdempotencyRef) -> Invoice:
        async with self._store.transaction() as tx:
            if idem.key and await tx.claim_key(idem.scope, idem.key, idem.request_hash) is not None:
                return await _invoice(tx, invoice_id)
            invoice = await _invoice(tx, invoice_id, lock=True)
            invoice_transition(invoice.status, InvoiceStatus.VOID)
            attempts = await tx.transactions(invoice_id)
            if attempts and (not attempts[-1].answered or awaiting_result(attempts[-1])):
                raise FailedPrecondition("a charge of this invoice is still waiting for its outcome")
            now = self._clock.now()
            await tx.set_invoice_status(invoice_id, InvoiceStatus.VOID)
            posting = ledger.void_posting(
                invoice.account_id, invoice_id, invoice.amount_due, invoice.credit_applied
            )
            if posting is not None:
                await tx.post(posting, now)
            voided = dataclasses.replace(invoice, status=InvoiceStatus.VOID)
            await tx.emit(Event(EventType.INVOICE_VOIDED, invoice=voided, extra={"reason": reason}))
            if idem.key:
                await tx.complete_key(idem.scope, idem.key, invoice_id)
            return voided

    async def on_payment_outcome(self, tx: Tx, update: PaymentUpdate) -> None:
        """payment.settled / payment.reconciled: the final word on a pending or unknown charge."""
        txn = await tx.transaction_for_payment(update.payment_id, update.idempotency_key)
        if txn is None:
            return
        await self._charging.record(tx, txn, update.result, Cause("gateway-adapter"), final_word=True)

    async def on_payment_returned(self, tx: Tx, update: PaymentUpdate, event_id: str) -> None:
        """An ACH debit came back: the money leaves again and the invoice goes to dunning."""
        txn = await tx.transaction_for_payment(update.payment_id, update.idempotency_key)
        if txn is None or txn.status is PaymentStatus.RETURNED:
            return
        invoice = await _invoice(tx, txn.invoice_id, lock=True)
        returned = dataclasses.replace(
            txn,
            status=PaymentStatus.RETURNED,
            payment_id=txn.payment_id or update.payment_id,
            failure_type=FailureType.CARDHOLDER,
            decline_kind=update.result.decline_kind,
            decline_code=update.result.decline_code,
            retryable=update.result.retryable,
        )
        await tx.save_transaction(returned)
        if invoice.status is InvoiceStatus.PAID:
            gateway = txn.gateway or update.result.gateway or "unknown"
            await tx.post(
                ledger.return_posting(invoice.account_id, txn.transaction_id, gateway, txn.amount),
                self._clock.now(),
            )
        if invoice.status in (InvoiceStatus.PAID, InvoiceStatus.OPEN, InvoiceStatus.PAYMENT_FAILED):
            await self._charging.mark_failed(
                tx, invoice, returned, Cause("gateway-adapter", event_id, "returned")
            )

    async def on_dunning_exhausted(self, tx: Tx, invoice_id: str, action: str, event_id: str) -> None:
        """Write the invoice off and suspend or cancel the subscription, as the merchant's policy says."""
        invoice = await tx.load_invoice(invoice_id, lock=True)
        if invoice is None:
            return
        now = self._clock.now()
        if invoice.status in (InvoiceStatus.OPEN, InvoiceStatus.PAYMENT_FAILED):
            invoice_transition(invoice.status, InvoiceStatus.UNCOLLECTIBLE)
            await tx.set_invoice_status(invoice_id, InvoiceStatus.UNCOLLECTIBLE)
            if invoice.amount_due.amount_minor:
                await tx.post(
                    ledger.write_off_posting(invoice.account_id, invoice_id, invoice.amount_due), now
                )
            written_off = dataclasses.replace(invoice, status=InvoiceStatus.UNCOLLECTIBLE)
            await tx.emit(Event(EventType.INVOICE_UNCOLLECTIBLE, invoice=written_off))
        sub = await tx.load_subscription(invoice.subscription_id, lock=True)
        if sub is None:
            return
        cause = Cause("dunning", event_id, "dunning exhausted")
        if self._policy.cancels(sub.merchant_id, action):
            if can(sub.status, Action.CANCEL):
                ended = cancelled(sub, now)
                await save_with_history(tx, sub, ended, cause, now)
                await tx.emit(
                    Event(
                        EventType.SUBSCRIPTION_CANCELLED, subscription=ended, extra={"at_period_end": False}
                    )
                )
        elif can(sub.status, Action.SUSPEND):
            suspended = sub.apply(Action.SUSPEND, now)
            await save_with_history(tx, sub, suspended, cause, now)
            await tx.emit(Event(EventType.SUBSCRIPTION_SUSPENDED, subscription=suspended))

    async def add_credit(
        self, account_id: str, amount: Money | None, reason: str, idem: IdempotencyRef
    ) -> Money:
        violations = Violations()
        violations.check(bool(account_id), "account_id", "required")
        violations.check(amount is not None and amount.amount_minor > 0, "amount", "must be positive")
        violations.check(bool(idem.key), "idempotency_key", "required")
        violations.raise_if_any()
        assert amount is not None
        async with self._store.transaction() as tx:
            if await tx.claim_key(idem.scope, idem.key, idem.request_hash) is None:
                reference = f"credit:{idem.key}" + (f" ({reason})" if reason else "")
                await tx.post(ledger.credit_posting(account_id, reference, amount), self._clock.now())
                await tx.complete_key(idem.scope, idem.key, account_id)
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
