"""Payments in PostgreSQL; every state change writes its payment.* event in the same transaction."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import datetime
from typing import Any

import asyncpg

from billing.common.v1 import common_pb2
from billing.events.v1 import payment_pb2 as events
from billing_common import telemetry
from billing_common.db import connection, transaction
from billing_common.errors import FailedPrecondition, NotFound
from billing_common.events import Outbox
from billing_common.suite_clock import DueWork
from gateway_adapter.adapters.codec import facts, payment_status_pb
from gateway_adapter.app.ports import GatewayReply, Outcome, PaymentEvent, StoredRefund
from gateway_adapter.domain.classification import Classification, DeclineKind, FailureType
from gateway_adapter.domain.payments import (
    ChargeRequest,
    MethodType,
    Payment,
    RefundRequest,
    Status,
    after_refund,
)


def payment_from(row: asyncpg.Record) -> Payment:
    request = ChargeRequest(
        merchant_id=row["merchant_id"],
        method_type=MethodType(row["method_type"]),
        token=row["gateway_token"],
        amount_minor=row["amount_minor"],
        currency=row["currency"],
        idempotency_key=row["idempotency_key"] or "",
        caller_reference=row["caller_reference"],
        metadata=row["metadata"],
    )
    classification = None
    if row["failure_type"] is not None:
        classification = Classification(
            row["normalized_code"],
            FailureType(row["failure_type"]),
            DeclineKind(row["decline_kind"]),
            row["retryable"],
        )
    return Payment(
        payment_id=str(row["payment_id"]),
        request=request,
        fingerprint=row["request_fingerprint"],
        gateway=row["gateway"],
        status=Status(row["status"]),
        classification=classification,
        gateway_code=row["gateway_code"],
        gateway_message=row["gateway_message"],
        gateway_reference=row["gateway_reference"],
        refunded_minor=row["refunded_minor"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        checks_done=row["checks_done"],
    )


def event_for(payment: Payment, outcome: Outcome) -> Any:
    about = facts(payment)
    match outcome.event:
        case PaymentEvent.SUCCEEDED:
            return events.PaymentSucceeded(payment=about)
        case PaymentEvent.FAILED:
            return events.PaymentFailed(payment=about)
        case PaymentEvent.PENDING:
            return events.PaymentPending(payment=about)
        case PaymentEvent.SETTLED:
            return events.PaymentSettled(payment=about)
        case PaymentEvent.RETURNED:
            return events.PaymentReturned(payment=about, return_code=outcome.return_code)
        case PaymentEvent.RECONCILED:
            previous = outcome.previous_status or Status.UNKNOWN
            return events.PaymentReconciled(payment=about, previous_status=payment_status_pb(previous))
    return None


class PostgresPayments:
    def __init__(self, pool: asyncpg.Pool, outbox: Outbox) -> None:
        self._pool = pool
        self._outbox = outbox

    async def claim(
        self, request: ChargeRequest, payment_id: str, gateway: str, now: datetime, check_at: datetime
    ) -> tuple[Payment, bool]:
        fingerprint = request.fingerprint()
        async with transaction(self._pool) as conn:
            row = await conn.fetchrow(
                """
                INSERT INTO payments (payment_id, idempotency_key, request_fingerprint, merchant_id,
                    method_type, gateway_token, amount_minor, currency, gateway, status, caller_reference,
                    metadata, created_at, updated_at, next_check_at, trace_context)
                VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 'PROCESSING', $10, $11, $12, $12, $13, $14)
                ON CONFLICT (idempotency_key) DO NOTHING
                RETURNING *
                """,
                uuid.UUID(payment_id),
                request.idempotency_key,
                fingerprint,
                request.merchant_id,
                request.method_type.value,
                request.token,
                request.amount_minor,
                request.currency,
                gateway,
                request.caller_reference,
                dict(request.metadata),
                now,
                check_at,
                telemetry.capture(),
            )
            if row is not None:
                return payment_from(row), True
            # The gateway never saw a FAILED payment (unreachable, circuit open): the same key may try again.
            row = await conn.fetchrow(
                """
                UPDATE payments SET status = 'PROCESSING', updated_at = $3, next_check_at = $4
                WHERE idempotency_key = $1 AND request_fingerprint = $2 AND status = 'FAILED'
                RETURNING *
                """,
                request.idempotency_key,
                fingerprint,
                now,
                check_at,
            )
            if row is not None:
                return payment_from(row), True
            row = await conn.fetchrow(
                "SELECT * FROM payments WHERE idempotency_key = $1", request.idempotency_key
            )
            if row is None:  # released between the two statements by the retention janitor
                raise FailedPrecondition("idempotency key is being released; retry")
            return payment_from(row), False

    async def record(self, payment: Payment, outcome: Outcome, now: datetime) -> Payment | None:
        async with transaction(self._pool) as conn:
            return await self._apply(conn, payment, outcome, now)

    async def _apply(
        self, conn: asyncpg.Connection, payment: Payment, outcome: Outcome, now: datetime
    ) -> Payment | None:
        classification = outcome.classification
        reply = outcome.reply or GatewayReply(code="")
        row = await conn.fetchrow(
            """
            UPDATE payments SET status = $3, normalized_code = $4, failure_type = $5, decline_kind = $6,
                retryable = $7, gateway_code = CASE WHEN $8 = '' THEN gateway_code ELSE $8 END,
                gateway_message = CASE WHEN $8 = '' THEN gateway_message ELSE $9 END,
                gateway_reference = CASE WHEN $10 = '' THEN gateway_reference ELSE $10 END,
                next_check_at = $11, updated_at = $12
            WHERE payment_id = $1 AND status = $2
            RETURNING *
            """,
            uuid.UUID(payment.payment_id),
            payment.status.value,
            outcome.status.value,
            classification.normalized_code if classification else None,
            classification.failure_type.value if classification else None,
            classification.decline_kind.value if classification else None,
            classification.retryable if classification else None,
            reply.code,
            reply.message,
            reply.reference,
            outcome.next_check_at,
            now,
        )
        if row is None:
            return None
        updated = payment_from(row)
        event = event_for(updated, outcome)
        if event is not None:
            await self._outbox.add(conn, event)
        return updated

    async def get(self, payment_id: str) -> Payment | None:
        try:
            key = uuid.UUID(payment_id)
        except ValueError:
            return None
        async with connection(self._pool) as conn:
            row = await conn.fetchrow("SELECT * FROM payments WHERE payment_id = $1", key)
        return payment_from(row) if row else None

    async def get_by_key(self, idempotency_key: str) -> Payment | None:
        async with connection(self._pool) as conn:
            row = await conn.fetchrow("SELECT * FROM payments WHERE idempotency_key = $1", idempotency_key)
        return payment_from(row) if row else None

    async def claim_due_checks(self, now: datetime, lease_until: datetime, limit: int) -> Sequence[Payment]:
        async with transaction(self._pool) as conn:
            rows = await conn.fetch(
                """
                UPDATE payments SET next_check_at = $2, checks_done = checks_done + 1
                WHERE payment_id IN (
                    SELECT payment_id FROM payments
                    WHERE status IN ('PROCESSING', 'UNKNOWN') AND next_check_at <= $1
                    ORDER BY next_check_at LIMIT $3 FOR UPDATE SKIP LOCKED)
                RETURNING *
                """,
                now,
                lease_until,
                limit,
            )
        return [payment_from(row) for row in rows]

    async def trace_context(self, payment_id: str) -> dict[str, str]:
        async with connection(self._pool) as conn:
            stored = await conn.fetchval(
                "SELECT trace_context FROM payments WHERE payment_id = $1", uuid.UUID(payment_id)
            )
        return dict(stored or {})

    async def forget_keys(self, older_than: datetime) -> int:
        async with transaction(self._pool) as conn:
            result = await conn.execute(
                """
                UPDATE payments SET idempotency_key = NULL
                WHERE idempotency_key IS NOT NULL AND created_at < $1
                    AND status NOT IN ('PROCESSING', 'UNKNOWN')
                """,
                older_than,
            )
        return int(result.split()[-1])

    async def refund(
        self,
        request: RefundRequest,
        refund_id: str,
        now: datetime,
        execute: Callable[[Payment], Awaitable[tuple[int, GatewayReply]]],
    ) -> tuple[StoredRefund, Payment, bool]:
        async with transaction(self._pool) as conn:
            existing = await conn.fetchrow(
                "SELECT * FROM refunds WHERE idempotency_key = $1", request.idempotency_key
            )
            if existing is not None:
                stored = _refund_from(existing)
                if stored.fingerprint != request.fingerprint():
                    raise FailedPrecondition(
                        f"idempotency key {request.idempotency_key!r} was used for a different refund"
                    )
                paid = await conn.fetchrow(
                    "SELECT * FROM payments WHERE payment_id = $1", existing["payment_id"]
                )
                assert paid is not None  # a refund references its payment
                return stored, payment_from(paid), True
            try:
                payment_key = uuid.UUID(request.payment_id)
            except ValueError as error:
                raise NotFound("payment not found") from error
            row = await conn.fetchrow("SELECT * FROM payments WHERE payment_id = $1 FOR UPDATE", payment_key)
            if row is None:
                raise NotFound("payment not found")
            payment = payment_from(row)
            amount, reply = await execute(payment)
            stored_row = await conn.fetchrow(
                """
                INSERT INTO refunds (refund_id, payment_id, idempotency_key, request_fingerprint,
                    amount_minor, currency, reason, gateway_reference, created_at)
                VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING *
                """,
                uuid.UUID(refund_id),
                payment_key,
                request.idempotency_key,
                request.fingerprint(),
                amount,
                payment.request.currency,
                request.reason,
                reply.reference,
                now,
            )
            refunded = after_refund(payment, amount, now)
            await conn.execute(
                "UPDATE payments SET refunded_minor = $2, status = $3, updated_at = $4 WHERE payment_id = $1",
                payment_key,
                refunded.refunded_minor,
                refunded.status.value,
                now,
            )
            assert stored_row is not None  # INSERT ... RETURNING
            stored = _refund_from(stored_row)
            await self._outbox.add(
                conn,
                events.PaymentRefunded(
                    payment=facts(refunded),
                    refund_id=stored.refund_id,
                    refunded=common_pb2.Money(amount_minor=amount, currency=stored.currency),
                    refunded_total=common_pb2.Money(
                        amount_minor=refunded.refunded_minor, currency=stored.currency
                    ),
                ),
            )
            return stored, refunded, False

    async def apply_notice(
        self,
        source: str,
        event_id: str,
        gateway_reference: str,
        idempotency_key: str,
        decide: Callable[[Payment], Outcome | None],
        now: datetime,
    ) -> bool:
        async with transaction(self._pool) as conn:
            fresh = await conn.fetchval(
                """
                INSERT INTO webhook_events (source, event_id, received_at) VALUES ($1, $2, $3)
                ON CONFLICT DO NOTHING RETURNING true
                """,
                source,
                event_id,
                now,
            )
            if not fresh:
                return False
            row = await conn.fetchrow(
                """
                SELECT * FROM payments
                WHERE (gateway_reference = $1 AND $1 <> '') OR (idempotency_key = $2 AND $2 <> '')
                LIMIT 1 FOR UPDATE
                """,
                gateway_reference,
                idempotency_key,
            )
            if row is not None:
                telemetry.link(row["trace_context"] or {})  # the notice is about that charge's payment
                payment = payment_from(row)
                outcome = decide(payment)
                if outcome is not None:
                    await self._apply(conn, payment, outcome, now)
            return True


def _refund_from(row: asyncpg.Record) -> StoredRefund:
    return StoredRefund(
        refund_id=str(row["refund_id"]),
        payment_id=str(row["payment_id"]),
        amount_minor=row["amount_minor"],
        currency=row["currency"],
        fingerprint=row["request_fingerprint"],
        created_at=row["created_at"],
    )


def due_payment_work(pool: asyncpg.Pool) -> DueWork:
    """Outcome checks and sandbox settlements due at the suite's test clock, for it to wait on."""

    async def due(now: datetime) -> Mapping[str, int]:
        async with connection(pool) as conn:
            checks = await conn.fetchval(
                """SELECT count(*) FROM payments
                   WHERE status IN ('PROCESSING', 'UNKNOWN') AND next_check_at <= $1""",
                now,
            )
            settlements = await conn.fetchval(
                "SELECT count(*) FROM sandbox_charges WHERE NOT cleared AND clears_at <= $1", now
            )
        return {"due payment checks": int(checks), "due sandbox settlements": int(settlements)}

    return due
