"""Consumers of recurring's events; each runs inside the inbox transaction of its event."""

from __future__ import annotations

from typing import Any

from billing_common.clock import Clock
from billing_common.events import Handler
from dunning.app.cases import CaseService
from dunning.entrypoints.mappers import payment_failure


def event_handlers(cases: CaseService, clock: Clock) -> dict[str, Handler]:
    async def on_payment_failed(conn: Any, event: Any) -> None:
        await cases.on_payment_failed(conn, payment_failure(event, clock.now()))

    async def on_paid(conn: Any, event: Any) -> None:
        await cases.on_invoice_paid(conn, event.invoice.invoice_id)

    async def on_voided(conn: Any, event: Any) -> None:
        await cases.on_invoice_voided(conn, event.invoice.invoice_id, event.reason)

    async def on_payment_method_updated(conn: Any, event: Any) -> None:
        await cases.on_payment_method_updated(conn, event.subscription.subscription_id)

    return {
        "invoice.payment_failed": on_payment_failed,
        "invoice.paid": on_paid,
        "invoice.voided": on_voided,
        "subscription.payment_method_updated": on_payment_method_updated,
    }
