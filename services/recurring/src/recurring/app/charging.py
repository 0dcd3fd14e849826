"""Sending a charge attempt to the payment service (what its answer changes is settled by
`domain.settlement`).

Exactly-once rule: a transaction row is written (PENDING, with its idempotency key) before the
charge is sent. Whoever finds it still unanswered sends the same key again, and gateway-adapter
answers a repeated key with the stored result, so a crash or a race never charges twice. Only an
answered GATEWAY_UNREACHABLE attempt (nothing happened) is followed by a new attempt and key.
"""

from __future__ import annotations

import asyncio

from recurring.app.ports import ChargeNotAnswered, Gateway, Pacer
from recurring.domain.invoicing import Transaction
from recurring.domain.payments import (
    ChargeRequest,
    ChargeResult,
    NoAnswer,
    gateway_for,
)
from recurring.domain.subscription import Subscription


class Charging:
    def __init__(self, gateway: Gateway, pacer: Pacer, max_in_flight: int) -> None:
        self._gateway = gateway
        self._pacer = pacer
        self._in_flight = asyncio.Semaphore(max_in_flight)

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
