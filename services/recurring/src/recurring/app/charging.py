"""Charging an invoice and applying what the gateway said: the one place that moves invoices,
transactions, ledger entries and the subscription's payment state together.

Exactly-once rule: a transaction row is written (PENDING, with its idempotency key) before the
charge is sent. Whoever finds it still unanswered sends the same key again, and gateway-adapter
answers a repeated key with the stored result, so a crash or a race never charges twice. Only an
answered GATEWAY_UNREACHABLE attempt (nothing happened) is followed by a new attempt and key.
"""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from datetime import datetime

from billing_common.clock import Clock
from billing_common.errors import NotFound
from recurring.app.ports import (
    ChargeNotAnswered,
    Event,
    EventType,
    Gateway,
    Invoice,
    Pacer,
    Transaction,
    Tx,
)
from recurring.app.subscriptions import Cause, save_with_history
from recurring.domain import ledger
from recurring.domain.payments import (
    ChargeRequest,
    ChargeResult,
    NoAnswer,
    Outcome,
    PaymentStatus,
    attempt_key,
    final_word_applies,
    gateway_for,
    outcome_of,
    past_due_after,
)
from recurring.domain.schedule import Frequency
from recurring.domain.status import Action, InvoiceStatus, SubscriptionStatus, can, invoice_transition
from recurring.domain.subscription import Subscription

BILLING = Cause("billing")


class Charging:
    def __init__(self, gateway: Gateway, pacer: Pacer, clock: Clock, max_in_flight: int) -> None:
        self._gateway = gateway
        self._pacer = pacer
        self._clock = clock
        self._in_flight = asyncio.Semaphore(max_in_flight)

    async def new_attempt(self, tx: Tx, invoice: Invoice, retry_key: str | None = None) -> Transaction:
        txn = self.attempt(invoice, len(await tx.transactions(invoice.invoice_id)) + 1, retry_key)
        await tx.insert_transaction(txn)
        return txn

    def attempt(self, invoice: Invoice, number: int, retry_key: str | None = None) -> Transaction:
        """The row of a charge attempt, to write before the charge is sent."""
        return Transaction(
            transaction_id=f"txn_{uuid.uuid4().hex}",
            invoice_id=invoice.invoice_id,
            attempt=number,
            idempotency_key=attempt_key(invoice.invoice_id, number),
            retry_key=retry_key,
            amount=invoice.amount_due,
            created_at=self._clock.now(),
        )

    async def send(self, txn: Transaction, sub: Subscription) -> ChargeResult | NoAnswer:
        """Charge with the transaction's key, paced per gateway; NoAnswer when nothing is known."""
        method = sub.payment_method
        gateway = gateway_for(method.type.value)
        # The slot is booked inside the in-flight bound, so a pod never waits on more slots than it
        # can send at once (and never books far ahead of what it sends).
        async with self._in_flight:
            await self._pacer.wait_turn(gateway)
            try:
                return await self._gateway.charge(
                    ChargeRequest(
                        merchant_id=sub.merchant_id,
                        method_type=method.type.value,
                        token=method.token,
                        amount=txn.amount,
                        idempotency_key=txn.idempotency_key,
                        invoice_id=txn.invoice_id,
                    )
                )
            except ChargeNotAnswered as failure:
                return failure.answer

    async def record(
        self,
        tx: Tx,
        txn: Transaction,
        result: ChargeResult,
        cause: Cause = BILLING,
        *,
        final_word: bool = False,
    ) -> Outcome | None:
        """Apply a charge result once; None when another worker recorded this attempt already.

        `final_word`: a payment.* event's result, for an attempt answered as pending or unknown, or
        one still unanswered (see `final_word_applies`).
        """
        invoice = await tx.load_invoice(txn.invoice_id, lock=True)
        if invoice is None:
            raise NotFound(f"invoice {txn.invoice_id} does not exist")
        current = next(
            t for t in await tx.transactions(invoice.invoice_id) if t.transaction_id == txn.transaction_id
        )
        if final_word:
            if not final_word_applies(current.answered, awaiting_result(current), result):
                return None
        elif current.answered:
            return None
        answered = answered_attempt(current, result)
        await tx.save_transaction(answered)
        outcome = outcome_of(result)
        if outcome is Outcome.PAID:
            await self.mark_paid(tx, invoice, answered, cause)
        elif outcome is Outcome.FAILED:
            await self.mark_failed(tx, invoice, answered, cause)
        elif outcome is Outcome.DEFERRED and (answered.retry_key is not None or final_word):
            # Nothing reached the gateway, and no run item waits for this attempt any more (a dunning
            # retry, or an unknown outcome found later to be "never received"): dunning takes it on.
            await self.mark_failed(tx, invoice, answered, cause)
        return outcome

    async def mark_paid(self, tx: Tx, invoice: Invoice, txn: Transaction | None, cause: Cause) -> None:
        """`txn` is the payment; None when account credit paid the whole invoice."""
        if invoice.status is InvoiceStatus.PAID:
            return
        now = self._clock.now()
        invoice_transition(invoice.status, InvoiceStatus.PAID)
        await tx.set_invoice_status(invoice.invoice_id, InvoiceStatus.PAID, paid_at=now)
        if txn is not None and txn.amount.amount_minor:
            gateway = txn.gateway or "unknown"
            await tx.post(
                ledger.payment_posting(invoice.account_id, txn.transaction_id, gateway, txn.amount), now
            )
        paid = dataclasses.replace(invoice, status=InvoiceStatus.PAID, paid_at=now)
        await tx.emit(Event(EventType.INVOICE_PAID, invoice=paid, transaction=txn))
        await self.after_paid(tx, invoice.subscription_id, cause)

    async def after_paid(self, tx: Tx, subscription_id: str, cause: Cause) -> None:
        """A one-time subscription completes; a trial or past-due one becomes active."""
        sub = await tx.load_subscription(subscription_id, lock=True)
        if sub is None:
            return
        now = self._clock.now()
        if sub.frequency is Frequency.ONE_TIME and can(sub.status, Action.COMPLETE):
            await self._move(tx, sub, Action.COMPLETE, EventType.SUBSCRIPTION_COMPLETED, cause, now)
        elif sub.status is SubscriptionStatus.TRIALING:
            await self._move(tx, sub, Action.ACTIVATE, EventType.SUBSCRIPTION_ACTIVATED, cause, now)
        elif can(sub.status, Action.PAYMENT_RECOVERED) and await tx.unpaid_invoices(subscription_id) == 0:
            await self._move(tx, sub, Action.PAYMENT_RECOVERED, EventType.SUBSCRIPTION_ACTIVATED, cause, now)

    async def mark_failed(self, tx: Tx, invoice: Invoice, txn: Transaction, cause: Cause) -> None:
        """The invoice waits for dunning: it hears invoice.payment_failed and retries (or, for a
        merchant failure, holds the invoice for an operator)."""
        if invoice.status is not InvoiceStatus.PAYMENT_FAILED:
            invoice_transition(invoice.status, InvoiceStatus.PAYMENT_FAILED)
            await tx.set_invoice_status(invoice.invoice_id, InvoiceStatus.PAYMENT_FAILED)
        failed = dataclasses.replace(invoice, status=InvoiceStatus.PAYMENT_FAILED)
        await tx.emit(Event(EventType.INVOICE_PAYMENT_FAILED, invoice=failed, transaction=txn))
        sub = await tx.load_subscription(invoice.subscription_id, lock=True)
        if (
            sub is not None
            and past_due_after(txn.failure_type)
            and sub.status is not SubscriptionStatus.PAST_DUE
            and can(sub.status, Action.PAYMENT_FAILED)
        ):
            await self._move(
                tx, sub, Action.PAYMENT_FAILED, EventType.SUBSCRIPTION_PAST_DUE, cause, self._clock.now()
            )

    async def _move(
        self, tx: Tx, sub: Subscription, action: Action, event: EventType, cause: Cause, now: datetime
    ) -> None:
        updated = sub.apply(action, now)
        await save_with_history(tx, sub, updated, cause, now)
        await tx.emit(Event(event, subscription=updated))


def quiet_after_payment(sub: Subscription) -> bool:
    """A payment changes nothing on this subscription (see `Charging.after_paid`)."""
    return (
        not (sub.frequency is Frequency.ONE_TIME and can(sub.status, Action.COMPLETE))
        and sub.status is not SubscriptionStatus.TRIALING
        and not can(sub.status, Action.PAYMENT_RECOVERED)
    )


def awaiting_result(txn: Transaction) -> bool:
    """Answered, but the final word comes later (ACH pending, or an unknown outcome)."""
    return txn.answered and txn.status in (PaymentStatus.PENDING, PaymentStatus.UNKNOWN)


def answered_attempt(txn: Transaction, result: ChargeResult) -> Transaction:
    """The attempt as the gateway answered it."""
    return dataclasses.replace(
        txn,
        status=result.status,
        payment_id=result.payment_id,
        gateway=result.gateway,
        failure_type=result.failure_type,
        decline_kind=result.decline_kind,
        decline_code=result.decline_code,
        retryable=result.retryable,
    )
