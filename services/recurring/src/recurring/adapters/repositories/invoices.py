"""Invoices, their lines and their charge attempts (transactions) in PostgreSQL."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime

import asyncpg

from billing_common import telemetry
from billing_common.money import Money
from billing_common.payments import DeclineKind, FailureType
from recurring.domain.invoicing import Invoice, InvoiceFilter, InvoiceLine, LineKind, Transaction
from recurring.domain.payments import PaymentStatus
from recurring.domain.status import InvoiceStatus


def _invoice(row: asyncpg.Record, lines: Sequence[asyncpg.Record] = ()) -> Invoice:
    currency = row["currency"]
    return Invoice(
        invoice_id=row["invoice_id"],
        subscription_id=row["subscription_id"],
        account_id=row["account_id"],
        merchant_id=row["merchant_id"],
        occurrence_key=row["occurrence_key"],
        status=InvoiceStatus(row["status"]),
        billing_date=row["billing_date"],
        period_start=row["period_start"],
        period_end=row["period_end"],
        total=Money(row["total_minor"], currency),
        credit_applied=Money(row["credit_applied"], currency),
        amount_due=Money(row["amount_due"], currency),
        created_at=row["created_at"],
        paid_at=row["paid_at"],
        refunded_minor=row["refunded_minor"],
        lines=tuple(
            InvoiceLine(
                LineKind(line["kind"]),
                line["description"],
                Money(line["amount_minor"], currency),
                line["quantity"],
                line["unit_price"],
            )
            for line in lines
        ),
    )


def _transaction(row: asyncpg.Record) -> Transaction:
    return Transaction(
        transaction_id=row["transaction_id"],
        invoice_id=row["invoice_id"],
        attempt=row["attempt"],
        idempotency_key=row["idempotency_key"],
        retry_key=row["retry_key"],
        amount=Money(row["amount_minor"], row["currency"]),
        created_at=row["created_at"],
        status=PaymentStatus(row["status"]),
        payment_id=row["payment_id"],
        gateway=row["gateway"],
        failure_type=FailureType(row["failure_type"]),
        decline_kind=DeclineKind(row["decline_kind"]),
        decline_code=row["decline_code"],
        retryable=row["retryable"],
        trace_context=dict(row["trace_context"] or {}),
    )


class PostgresInvoices:
    def __init__(self, conn: asyncpg.Connection) -> None:
        self._conn = conn

    async def add(self, invoices: Sequence[Invoice]) -> None:
        await self._conn.executemany(
            """INSERT INTO invoices (invoice_id, subscription_id, account_id, merchant_id, occurrence_key,
                   status,
                   billing_date, period_start, period_end, total_minor, credit_applied, amount_due, currency,
                   created_at, paid_at)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)""",
            [
                (
                    invoice.invoice_id,
                    invoice.subscription_id,
                    invoice.account_id,
                    invoice.merchant_id,
                    invoice.occurrence_key,
                    invoice.status.value,
                    invoice.billing_date,
                    invoice.period_start,
                    invoice.period_end,
                    invoice.total.amount_minor,
                    invoice.credit_applied.amount_minor,
                    invoice.amount_due.amount_minor,
                    invoice.total.currency,
                    invoice.created_at,
                    invoice.paid_at,
                )
                for invoice in invoices
            ],
        )
        await self._conn.executemany(
            """INSERT INTO invoice_lines
                   (invoice_id, position, kind, description, quantity, unit_price, amount_minor)
               VALUES ($1, $2, $3, $4, $5, $6, $7)""",
            [
                (
                    invoice.invoice_id,
                    i,
                    line.kind.value,
                    line.description,
                    line.quantity,
                    line.unit_price,
                    line.amount.amount_minor,
                )
                for invoice in invoices
                for i, line in enumerate(invoice.lines)
            ],
        )

    async def _with_lines(self, rows: Sequence[asyncpg.Record]) -> list[Invoice]:
        if not rows:
            return []
        lines = await self._conn.fetch(
            "SELECT * FROM invoice_lines WHERE invoice_id = ANY($1::text[]) ORDER BY invoice_id, position",
            [row["invoice_id"] for row in rows],
        )
        lines_of: dict[str, list[asyncpg.Record]] = {}
        for line in lines:
            lines_of.setdefault(line["invoice_id"], []).append(line)
        return [_invoice(row, lines_of.get(row["invoice_id"], ())) for row in rows]

    async def load(self, invoice_ids: Sequence[str], *, lock: bool = False) -> dict[str, Invoice]:
        rows = await self._conn.fetch(
            "SELECT * FROM invoices WHERE invoice_id = ANY($1::text[]) ORDER BY invoice_id"
            + (" FOR UPDATE" if lock else ""),
            list(invoice_ids),
        )
        return {invoice.invoice_id: invoice for invoice in await self._with_lines(rows)}

    async def for_occurrences(self, occurrence_keys: Sequence[str]) -> dict[str, Invoice]:
        rows = await self._conn.fetch(
            "SELECT * FROM invoices WHERE occurrence_key = ANY($1::text[])", list(occurrence_keys)
        )
        return {r["occurrence_key"]: _invoice(r) for r in rows}

    async def page(self, where: InvoiceFilter, after: int, limit: int) -> list[tuple[int, Invoice]]:
        rows = await self._conn.fetch(
            """SELECT * FROM invoices
               WHERE ($1 = '' OR subscription_id = $1) AND ($2 = '' OR account_id = $2)
                 AND ($3::text IS NULL OR status = $3) AND seq > $4
               ORDER BY seq LIMIT $5""",
            where.subscription_id,
            where.account_id,
            where.status.value if where.status else None,
            after,
            limit,
        )
        invoices = await self._with_lines(rows)
        return [(int(row["seq"]), invoice) for row, invoice in zip(rows, invoices, strict=True)]

    async def set_statuses(
        self, invoice_ids: Sequence[str], status: InvoiceStatus, paid_at: datetime | None = None
    ) -> None:
        await self._conn.execute(
            """UPDATE invoices SET status = $2, paid_at = coalesce($3, paid_at)
               WHERE invoice_id = ANY($1::text[])""",
            list(invoice_ids),
            status.value,
            paid_at,
        )

    async def set_refunds(self, refunded: Mapping[str, int]) -> None:
        await self._conn.execute(
            """UPDATE invoices i SET refunded_minor = r.refunded
               FROM unnest($1::text[], $2::bigint[]) AS r(invoice_id, refunded)
               WHERE i.invoice_id = r.invoice_id""",
            list(refunded),
            list(refunded.values()),
        )

    async def unpaid_counts(self, subscription_ids: Sequence[str]) -> dict[str, int]:
        rows = await self._conn.fetch(
            """SELECT subscription_id, count(*) AS unpaid FROM invoices
               WHERE subscription_id = ANY($1::text[]) AND status IN ('open', 'payment_failed')
               GROUP BY subscription_id""",
            list(subscription_ids),
        )
        return {r["subscription_id"]: int(r["unpaid"]) for r in rows}

    async def add_attempts(self, txns: Sequence[Transaction]) -> None:
        trace_context = telemetry.capture()
        await self._conn.executemany(
            """INSERT INTO transactions (transaction_id, invoice_id, attempt, idempotency_key, retry_key,
                   status,
                   amount_minor, currency, created_at, trace_context)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)""",
            [
                (
                    txn.transaction_id,
                    txn.invoice_id,
                    txn.attempt,
                    txn.idempotency_key,
                    txn.retry_key,
                    txn.status.value,
                    txn.amount.amount_minor,
                    txn.amount.currency,
                    txn.created_at,
                    txn.trace_context or trace_context,
                )
                for txn in txns
            ],
        )

    async def save_attempts(self, txns: Sequence[Transaction]) -> None:
        await self._conn.executemany(
            """UPDATE transactions SET status = $2, payment_id = $3, gateway = $4, failure_type = $5,
                   decline_kind = $6, decline_code = $7, retryable = $8
               WHERE transaction_id = $1""",
            [
                (
                    txn.transaction_id,
                    txn.status.value,
                    txn.payment_id,
                    txn.gateway,
                    txn.failure_type.value,
                    txn.decline_kind.value,
                    txn.decline_code,
                    txn.retryable,
                )
                for txn in txns
            ],
        )

    async def attempts_of(self, invoice_ids: Sequence[str]) -> dict[str, list[Transaction]]:
        rows = await self._conn.fetch(
            "SELECT * FROM transactions WHERE invoice_id = ANY($1::text[]) ORDER BY invoice_id, attempt",
            list(invoice_ids),
        )
        found: dict[str, list[Transaction]] = {}
        for r in rows:
            found.setdefault(r["invoice_id"], []).append(_transaction(r))
        return found

    async def by_retry_keys(self, retry_keys: Sequence[str]) -> dict[str, Transaction]:
        rows = await self._conn.fetch(
            "SELECT * FROM transactions WHERE retry_key = ANY($1::text[])", list(retry_keys)
        )
        return {r["retry_key"]: _transaction(r) for r in rows}

    async def find_for_payment(self, payment_id: str, idempotency_key: str) -> Transaction | None:
        row = await self._conn.fetchrow(
            """SELECT * FROM transactions WHERE idempotency_key = $2 OR ($1 <> '' AND payment_id = $1)
               ORDER BY (idempotency_key = $2) DESC LIMIT 1""",
            payment_id,
            idempotency_key,
        )
        return None if row is None else _transaction(row)
