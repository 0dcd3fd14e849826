"""The payment store's statements on real PostgreSQL, as the pods' pooled connections run them."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from billing_common import db
from billing_common.clock import SystemClock
from billing_common.events import Outbox
from billing_common.money import Money
from billing_common.payments import MethodType
from billing_devtools.testing.plugin import InfraEnv
from billing_devtools.testing.scans import rows_read
from gateway_adapter.adapters.payment_store import PostgresPayments
from gateway_adapter.app.ports import Claim, GatewayReply, PaymentUpdate, Recording
from gateway_adapter.domain.payments import ChargeRequest, PaymentEvent, Status

from .conftest import gateway_service


async def _charge(store: PostgresPayments, count: int) -> None:
    """`count` new keys claimed together and their approvals recorded together, as a group does."""
    now = datetime.now(UTC)
    claims = [
        Claim(
            ChargeRequest(
                "merchant-a", MethodType.CARD, "tok_success", Money(1999, "USD"), f"key-{uuid.uuid4()}"
            ),
            str(uuid.uuid4()),
            "sandbox-card",
            {},
        )
        for _ in range(count)
    ]
    claimed = await store.claim(claims, now, now + timedelta(minutes=1))
    approved = PaymentUpdate(Status.SUCCEEDED, None, GatewayReply("approved"), PaymentEvent.SUCCEEDED)
    recorded = await store.record(
        [Recording(payment, approved) for payment, _ in claimed if payment is not None], now
    )
    assert [payment.status if payment else None for payment in recorded] == [Status.SUCCEEDED] * count


async def test_recording_outcomes_reads_payments_by_key_however_much_the_table_has_grown(
    env: InfraEnv,
) -> None:
    """A pooled connection keeps its prepared statements, and PostgreSQL may keep one plan for a
    statement, costed when it was made. A plan that scanned the whole table, made while the table
    was nearly empty and without statistics (a server without autovacuum never gathers them),
    would have every later recording read every payment: the bench's Charge rounds fell from 823
    to 423 charges/s that way."""
    async with gateway_service(env) as gateway:
        schema = gateway.settings.schema
        pool = await db.create_pool(
            db.dsn_with_user(env.infra.postgres_admin_url, schema), schema, application="test", max_size=1
        )
        try:
            store = PostgresPayments(pool, Outbox("gateway-adapter", SystemClock()))
            for _ in range(20):  # single charges in groups of three, while the table is small
                await _charge(store, 3)
            await pool.execute(
                """INSERT INTO payments (payment_id, idempotency_key, request_fingerprint, merchant_id,
                       method_type, gateway_token, amount_minor, currency, gateway, status, created_at,
                       updated_at)
                   SELECT gen_random_uuid(), 'old-' || n, '', 'merchant-a', 'CARD', 'tok_success', 1999,
                       'USD', 'sandbox-card', 'SUCCEEDED', now(), now()
                   FROM generate_series(1, 20000) AS n"""
            )
            before = await rows_read(pool, "payments")

            await _charge(store, 3)

            read = await rows_read(pool, "payments") - before
            assert read <= 20  # the group's own payments, not the 20,000 before them
        finally:
            await pool.close()
