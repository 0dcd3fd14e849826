"""Sending charge attempts to the payment service (what its answers change is settled by
`domain.settlement`). gateway-adapter alone routes and paces: a run's charges go in one batch call
per batch (its batch lane), a retry someone waits for goes alone (its interactive lane).

Exactly-once rule: a transaction row is written (PENDING, with its idempotency key) before the
charge is sent. Whoever finds it still unanswered sends the same key again, and gateway-adapter
answers a repeated key with the stored result, so a crash or a race never charges twice. Only an
answered GATEWAY_UNREACHABLE attempt (nothing happened) is followed by a new attempt and key.
"""

from __future__ import annotations

from collections.abc import Sequence

from recurring.app.ports import Gateway
from recurring.domain.invoicing import Transaction
from recurring.domain.payments import ChargeRequest, ChargeResult, NoAnswer
from recurring.domain.subscription import Subscription


class Charging:
    def __init__(self, gateway: Gateway) -> None:
        self._gateway = gateway

    async def send(self, txn: Transaction, sub: Subscription) -> ChargeResult | NoAnswer:
        """Charge one attempt with its key; NoAnswer when nothing is known."""
        return await self._gateway.charge(_request(txn, sub))

    async def send_all(
        self, attempts: Sequence[tuple[Transaction, Subscription]]
    ) -> list[ChargeResult | NoAnswer]:
        """Charge a batch's attempts together; one answer each, in order."""
        return await self._gateway.charge_batch([_request(txn, sub) for txn, sub in attempts])


def _request(txn: Transaction, sub: Subscription) -> ChargeRequest:
    method = sub.payment_method
    return ChargeRequest(
        merchant_id=sub.merchant_id,
        method_type=method.type.value,
        token=method.token,
        amount=txn.amount,
        idempotency_key=txn.idempotency_key,
        invoice_id=txn.invoice_id,
    )
