"""Consumers: tier.changed (plan moves), dunning.exhausted (write-off), payment.* (async outcomes,
returns and refunds).

Each handler runs inside the inbox transaction of its event and hands its connection to the use
case, which writes on it (as every service's handlers do).
"""

from __future__ import annotations

import asyncpg

from billing.events.v1 import dunning_pb2, payment_pb2, tier_pb2
from billing_common.events import Handlers
from billing_common.protos import EXHAUSTED_ACTIONS, TIERS, money_of
from recurring.adapters.clients import charge_result
from recurring.app.invoices import Invoices
from recurring.app.subscriptions import Subscriptions
from recurring.domain.amendments import tier_moving_plans
from recurring.domain.payments import PaymentUpdate
from recurring.domain.subscription import Cause


def payment_update(facts: payment_pb2.PaymentFacts, *, decline_code: str = "") -> PaymentUpdate:
    return PaymentUpdate(
        payment_id=facts.payment_id,
        idempotency_key=facts.idempotency_key,
        result=charge_result(facts, decline_code),
    )


def event_handlers(subscriptions: Subscriptions, invoices: Invoices) -> Handlers:
    async def on_tier_changed(conn: asyncpg.Connection, event: tier_pb2.TierChanged) -> None:
        tier = TIERS.get(event.new_tier, None)
        account = tier_moving_plans(event.account_id, event.billed_account_id)
        if tier is None or account is None:
            return
        cause = Cause("tier.changed", event.header.event_id, f"tier {tier} by rule {event.rule_id}")
        await subscriptions.on_tier_changed(conn, account, tier, cause)

    async def on_dunning_exhausted(conn: asyncpg.Connection, event: dunning_pb2.DunningExhausted) -> None:
        await invoices.on_dunning_exhausted(
            conn,
            event.dunning_case.invoice_id,
            EXHAUSTED_ACTIONS.get(event.action, None),
            event.header.event_id,
        )

    async def on_payment_outcome(
        conn: asyncpg.Connection, event: payment_pb2.PaymentSettled | payment_pb2.PaymentReconciled
    ) -> None:
        await invoices.on_payment_outcome(conn, payment_update(event.payment))

    async def on_payment_returned(conn: asyncpg.Connection, event: payment_pb2.PaymentReturned) -> None:
        update = payment_update(event.payment, decline_code=event.return_code)
        await invoices.on_payment_returned(conn, update, event.header.event_id)

    async def on_payment_refunded(conn: asyncpg.Connection, event: payment_pb2.PaymentRefunded) -> None:
        await invoices.on_payment_refunded(
            conn,
            payment_update(event.payment),
            event.refund_id,
            money_of(event.refunded_total),
        )

    return (
        Handlers()
        .on(tier_pb2.TierChanged, on_tier_changed)
        .on(dunning_pb2.DunningExhausted, on_dunning_exhausted)
        .on(payment_pb2.PaymentSettled, on_payment_outcome)
        .on(payment_pb2.PaymentReconciled, on_payment_outcome)
        .on(payment_pb2.PaymentReturned, on_payment_returned)
        .on(payment_pb2.PaymentRefunded, on_payment_refunded)
    )
