"""Payments in PostgreSQL; every state change writes its payment.* event in the same transaction."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any

import asyncpg

from billing.events.v1 import payment_pb2 as events
from billing_common import db, telemetry
from billing_common.db import connection, transaction
from billing_common.errors import KeyReused, NotFound
from billing_common.events import Outbox
from billing_common.money import Money
from billing_common.payments import DeclineKind, FailureType, MethodType
from billing_common.protos import money_pb
from billing_common.suite_clock import DueWork
from gateway_adapter.adapters.codec import facts, payment_status_pb
from gateway_adapter.app.ports import (
    Claim,
    GatewayReply,
    PaymentUpdate,
    Recording,
    RefundClaim,
    StoredRefund,
)
from gateway_adapter.domain.classification import Classification
from gateway_adapter.domain.payments import (
    ChargeRequest,
    Payment,
    PaymentEvent,
    RefundRequest,
    Status,
    after_refund,
)


def payment_from(row: asyncpg.Record) -> Payment:
    request = ChargeRequest(
        merchant_id=row["merchant_id"],
        method_type=MethodType[row["method_type"]],  # stored by name (CARD)
        token=row["gateway_token"],
        amount=Money(row["amount_minor"], row["currency"]),
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
        refunded=Money(row["refunded_minor"], row["currency"]),
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        checks_done=row["checks_done"],
    )


def event_for(payment: Payment, outcome: PaymentUpdate) -> Any:
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
        self, claims: Sequence[Claim], now: datetime, lease_until: datetime
    ) -> list[tuple[Payment | None, bool]]:
        fingerprints = [claim.request.fingerprint() for claim in claims]
        keys = [claim.request.idempotency_key for claim in claims]
        # Each statement is atomic on its own (the INSERT takes every free key of the group at once):
        # no BEGIN and COMMIT around them.
        async with connection(self._pool) as conn:
            inserted = await conn.fetch(
                """
                INSERT INTO payments (payment_id, idempotency_key, request_fingerprint, merchant_id,
                    method_type, gateway_token, amount_minor, currency, gateway, status, caller_reference,
                    metadata, created_at, updated_at, next_check_at, trace_context)
                SELECT c.payment_id, c.key, c.fingerprint, c.merchant_id, c.method_type, c.token,
                    c.amount_minor, c.currency, c.gateway, 'PROCESSING', c.caller_reference,
                    c.metadata, $12, $12, $13, c.trace_context
                FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
                    $7::bigint[], $8::text[], $9::text[], $10::text[], $11::jsonb[], $14::jsonb[])
                    AS c(payment_id, key, fingerprint, merchant_id, method_type, token, amount_minor,
                        currency, gateway, caller_reference, metadata, trace_context)
                ON CONFLICT (idempotency_key) DO NOTHING
                RETURNING *
                """,
                [uuid.UUID(claim.payment_id) for claim in claims],
                keys,
                fingerprints,
                [claim.request.merchant_id for claim in claims],
                [claim.request.method_type.name for claim in claims],
                [claim.request.token for claim in claims],
                [claim.request.amount.amount_minor for claim in claims],
                [claim.request.amount.currency for claim in claims],
                [claim.gateway for claim in claims],
                [claim.request.caller_reference for claim in claims],
                [dict(claim.request.metadata) for claim in claims],
                now,
                lease_until,
                [dict(claim.trace_context) for claim in claims],
            )
            won = {str(row["payment_id"]): payment_from(row) for row in inserted}
            taken = {payment.request.idempotency_key for payment in won.values()}
            rest = [i for i, claim in enumerate(claims) if claim.request.idempotency_key not in taken]
            # The gateway never saw a FAILED payment (unreachable, circuit open): the same key may try
            # again, and the first caller of the group asking for it takes it.
            retried: dict[str, Payment] = {}
            if rest:
                rows = await conn.fetch(
                    """
                    UPDATE payments SET status = 'PROCESSING', updated_at = $3, next_check_at = $4
                    WHERE idempotency_key = ANY($1::text[]) AND status = 'FAILED'
                        AND request_fingerprint = ($2::text[])[array_position($1::text[], idempotency_key)]
                    RETURNING *
                    """,
                    [keys[i] for i in rest],
                    [fingerprints[i] for i in rest],
                    now,
                    lease_until,
                )
                retried = {row["idempotency_key"]: payment_from(row) for row in rows}
            stored: dict[str, Payment] = {}
            rest = [i for i in rest if keys[i] not in retried]
            if rest:
                rows = await conn.fetch(
                    "SELECT * FROM payments WHERE idempotency_key = ANY($1::text[])", [keys[i] for i in rest]
                )
                stored = {row["idempotency_key"]: payment_from(row) for row in rows}
        by_key = {payment.request.idempotency_key: payment for payment in won.values()} | retried | stored
        answers: list[tuple[Payment | None, bool]] = []
        for claim, key in zip(claims, keys, strict=True):
            if claim.payment_id in won:
                answers.append((won[claim.payment_id], True))
            elif key in retried:
                answers.append((retried.pop(key), True))
            else:
                answers.append((by_key.get(key), False))
        return answers

    async def record(self, recordings: Sequence[Recording], now: datetime) -> list[Payment | None]:
        async with transaction(self._pool) as conn:
            return await self._apply(conn, recordings, now)

    async def _apply(
        self, conn: asyncpg.Connection, recordings: Sequence[Recording], now: datetime
    ) -> list[Payment | None]:
        """Every outcome in one statement and its events in one more, in the caller's transaction."""
        columns: list[list[Any]] = [[] for _ in range(11)]
        for recording in recordings:
            classification = recording.outcome.classification
            reply = recording.outcome.reply or GatewayReply(code="")
            values = (
                uuid.UUID(recording.payment.payment_id),
                recording.payment.status.value,
                recording.outcome.status.value,
                classification.normalized_code if classification else None,
                classification.failure_type.value if classification else None,
                classification.decline_kind.value if classification else None,
                classification.retryable if classification else None,
                reply.code,
                reply.message,
                reply.reference,
                recording.outcome.next_check_at,
            )
            for column, value in zip(columns, values, strict=True):
                column.append(value)
        await db.plan_each_call(conn)
        rows = await conn.fetch(
            """
            UPDATE payments p SET status = o.status, normalized_code = o.normalized_code,
                failure_type = o.failure_type, decline_kind = o.decline_kind, retryable = o.retryable,
                gateway_code = CASE WHEN o.code = '' THEN p.gateway_code ELSE o.code END,
                gateway_message = CASE WHEN o.code = '' THEN p.gateway_message ELSE o.message END,
                gateway_reference = CASE WHEN o.reference = '' THEN p.gateway_reference ELSE o.reference END,
                next_check_at = o.next_check_at, updated_at = $12
            FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
                $7::boolean[], $8::text[], $9::text[], $10::text[], $11::timestamptz[])
                AS o(payment_id, previous, status, normalized_code, failure_type, decline_kind,
                    retryable, code, message, reference, next_check_at)
            WHERE p.payment_id = o.payment_id AND p.status = o.previous
            RETURNING p.*
            """,
            *columns,
            now,
        )
        updated = {str(row["payment_id"]): payment_from(row) for row in rows}
        answers = [updated.get(recording.payment.payment_id) for recording in recordings]
        announced = [
            event_for(payment, recording.outcome)
            for payment, recording in zip(answers, recordings, strict=True)
            if payment is not None
        ]
        await self._outbox.add_many(conn, [event for event in announced if event is not None])
        return answers

    async def renew_leases(self, payment_ids: Sequence[str], lease_until: datetime) -> None:
        async with transaction(self._pool) as conn:
            await conn.execute(
                """
                UPDATE payments SET next_check_at = $2
                WHERE payment_id = ANY($1::uuid[]) AND status = 'PROCESSING'
                """,
                [uuid.UUID(payment_id) for payment_id in payment_ids],
                lease_until,
            )

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

    async def claim_refund(
        self,
        request: RefundRequest,
        refund_id: str,
        now: datetime,
        amount_of: Callable[[Payment, int], Money],
    ) -> RefundClaim:
        async with transaction(self._pool) as conn:
            existing = await conn.fetchrow(
                "SELECT * FROM refunds WHERE idempotency_key = $1", request.idempotency_key
            )
            if existing is not None:
                stored = _refund_from(existing)
                if stored.fingerprint != request.fingerprint():
                    raise KeyReused(request.idempotency_key, "refund")
                paid = await conn.fetchrow(
                    "SELECT * FROM payments WHERE payment_id = $1", existing["payment_id"]
                )
                assert paid is not None  # a refund references its payment
                return RefundClaim(stored, payment_from(paid), existing["recorded_at"] is not None)
            try:
                payment_key = uuid.UUID(request.payment_id)
            except ValueError as error:
                raise NotFound("payment not found") from error
            row = await conn.fetchrow("SELECT * FROM payments WHERE payment_id = $1 FOR UPDATE", payment_key)
            if row is None:
                raise NotFound("payment not found")
            payment = payment_from(row)
            claimed = await conn.fetchval(
                """SELECT coalesce(sum(amount_minor), 0)::bigint FROM refunds
                   WHERE payment_id = $1 AND recorded_at IS NULL""",
                payment_key,
            )
            stored_row = await conn.fetchrow(
                """
                INSERT INTO refunds (refund_id, payment_id, idempotency_key, request_fingerprint,
                    amount_minor, currency, reason, created_at)
                VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING *
                """,
                uuid.UUID(refund_id),
                payment_key,
                request.idempotency_key,
                request.fingerprint(),
                amount_of(payment, claimed).amount_minor,
                payment.request.amount.currency,
                request.reason,
                now,
            )
            assert stored_row is not None  # INSERT ... RETURNING
            return RefundClaim(_refund_from(stored_row), payment, recorded=False)

    async def record_refund(
        self, refund_id: str, reply: GatewayReply, now: datetime
    ) -> tuple[StoredRefund, Payment]:
        async with transaction(self._pool) as conn:
            # The payment's row first, as a claim takes it: one lock order.
            row = await conn.fetchrow(
                """SELECT p.* FROM payments p JOIN refunds r ON r.payment_id = p.payment_id
                   WHERE r.refund_id = $1 FOR UPDATE OF p""",
                uuid.UUID(refund_id),
            )
            claim = await conn.fetchrow(
                "SELECT * FROM refunds WHERE refund_id = $1 FOR UPDATE", uuid.UUID(refund_id)
            )
            assert row is not None and claim is not None  # a claim is recorded, never deleted
            payment, stored = payment_from(row), _refund_from(claim)
            if claim["recorded_at"] is not None:
                return stored, payment  # a retry with the same key recorded it first
            await conn.execute(
                "UPDATE refunds SET gateway_reference = $2, recorded_at = $3 WHERE refund_id = $1",
                uuid.UUID(refund_id),
                reply.reference,
                now,
            )
            refunded = after_refund(payment, stored.amount, now)
            await conn.execute(
                "UPDATE payments SET refunded_minor = $2, status = $3, updated_at = $4 WHERE payment_id = $1",
                row["payment_id"],
                refunded.refunded.amount_minor,
                refunded.status.value,
                now,
            )
            await self._outbox.add(
                conn,
                events.PaymentRefunded(
                    payment=facts(refunded),
                    refund_id=stored.refund_id,
                    refunded=money_pb(stored.amount),
                    refunded_total=money_pb(refunded.refunded),
                ),
            )
            return stored, refunded

    async def apply_notice(
        self,
        source: str,
        event_id: str,
        gateway_reference: str,
        idempotency_key: str,
        decide: Callable[[Payment], PaymentUpdate | None],
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
                    await self._apply(conn, [Recording(payment, outcome)], now)
            return True


def _refund_from(row: asyncpg.Record) -> StoredRefund:
    return StoredRefund(
        refund_id=str(row["refund_id"]),
        payment_id=str(row["payment_id"]),
        amount=Money(row["amount_minor"], row["currency"]),
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
