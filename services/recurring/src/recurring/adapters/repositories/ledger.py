"""The double-entry ledger in PostgreSQL: postings, credit and balances."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime

import asyncpg

from billing_common.money import Money
from recurring.domain import ledger
from recurring.domain.ledger import LedgerLine, Posting


class PostgresLedger:
    def __init__(self, conn: asyncpg.Connection) -> None:
        self._conn = conn

    async def post(self, postings: Sequence[Posting], at: datetime) -> None:
        """Each posting is one ledger transaction; all of them go in one statement."""
        rows = [
            (ltx, p.customer, e.account, e.amount.amount_minor, e.amount.currency, p.kind.value, p.reference)
            for p, ltx in ((p, f"ltx_{uuid.uuid4().hex}") for p in postings)
            for e in p.entries
        ]
        if not rows:
            return
        await self._conn.execute(
            """INSERT INTO ledger_entries (ledger_transaction_id, customer, account, amount_minor, currency,
                   kind, reference, created_at)
               SELECT e.ltx, e.customer, e.account, e.amount, e.currency, e.kind, e.reference, $8
               FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::text[], $6::text[],
                           $7::text[]) AS e(ltx, customer, account, amount, currency, kind, reference)""",
            *(list(column) for column in zip(*rows, strict=True)),
            at,
        )

    async def credits(self, customers: Sequence[tuple[str, str]]) -> dict[tuple[str, str], Money]:
        rows = await self._conn.fetch(
            """SELECT c.customer, c.currency, coalesce(-sum(l.amount_minor), 0) AS credit
               FROM unnest($1::text[], $2::text[], $3::text[]) AS c(customer, currency, account)
               LEFT JOIN ledger_entries l
                 ON l.customer = c.customer AND l.currency = c.currency AND l.account = c.account
               GROUP BY c.customer, c.currency""",
            [c for c, _ in customers],
            [cur for _, cur in customers],
            [ledger.customer_credit(c) for c, _ in customers],
        )
        return {(r["customer"], r["currency"]): Money(int(r["credit"]), r["currency"]) for r in rows}

    async def balances(self, customer: str, currency: str) -> tuple[Money, Money]:
        row = await self._conn.fetchrow(
            """SELECT coalesce(sum(amount_minor), 0) AS balance,
                      coalesce(sum(amount_minor) FILTER (WHERE account = $3), 0) AS credit
               FROM ledger_entries WHERE customer = $1 AND currency = $4 AND account IN ($2, $3)""",
            customer,
            ledger.receivable(customer),
            ledger.customer_credit(customer),
            currency,
        )
        assert row is not None
        # A positive credit account is a balance carried to the next invoice: no credit available.
        return Money(int(row["balance"]), currency), Money(max(0, -int(row["credit"])), currency)

    async def lines(self, customer: str, after: int, limit: int) -> list[LedgerLine]:
        rows = await self._conn.fetch(
            """SELECT * FROM ledger_entries WHERE customer = $1 AND entry_id > $2
               ORDER BY entry_id LIMIT $3""",
            customer,
            after,
            limit,
        )
        return [
            LedgerLine(
                r["entry_id"],
                r["ledger_transaction_id"],
                r["account"],
                Money(r["amount_minor"], r["currency"]),
                r["kind"],
                r["reference"],
                r["created_at"],
            )
            for r in rows
        ]
