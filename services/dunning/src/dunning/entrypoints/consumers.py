"""Consumers of recurring's events; each runs inside the inbox transaction of its event."""

from __future__ import annotations

import asyncpg

from billing.events.v1 import invoice_pb2, subscription_pb2
from billing_common.clock import Clock
from billing_common.events import Handlers
from dunning.app.cases import CaseService
from dunning.entrypoints.mappers import payment_failure


def event_handlers(cases: CaseService, clock: Clock) -> Handlers:
    async def on_payment_failed(conn: asyncpg.Connection, event: invoice_pb2.InvoicePaymentFailed) -> None:
        await cases.on_payment_failed(conn, payment_failure(event, clock.now()))

    async def on_paid(conn: asyncpg.Connection, event: invoice_pb2.InvoicePaid) -> None:
        await cases.on_invoice_paid(conn, event.invoice.invoice_id)

    async def on_voided(conn: asyncpg.Connection, event: invoice_pb2.InvoiceVoided) -> None:
        await cases.on_invoice_voided(conn, event.invoice.invoice_id, event.reason)

    async def on_payment_method_updated(
        conn: asyncpg.Connection, event: subscription_pb2.SubscriptionPaymentMethodUpdated
    ) -> None:
        await cases.on_payment_method_updated(conn, event.subscription.subscription_id)

    return (
        Handlers()
        .on(invoice_pb2.InvoicePaymentFailed, on_payment_failed)
        .on(invoice_pb2.InvoicePaid, on_paid)
        .on(invoice_pb2.InvoiceVoided, on_voided)
        .on(subscription_pb2.SubscriptionPaymentMethodUpdated, on_payment_method_updated)
    )
