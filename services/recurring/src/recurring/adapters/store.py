"""recurring's unit of work in PostgreSQL: one connection inside one transaction, with a
repository per aggregate on it."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import asyncpg

from billing_common import db
from billing_common.events import Outbox
from billing_common.locks import Lease
from recurring.adapters.events import EventMessages
from recurring.adapters.repositories.invoices import PostgresInvoices
from recurring.adapters.repositories.ledger import PostgresLedger
from recurring.adapters.repositories.outbox import PostgresIdempotencyKeys, PostgresOutbox
from recurring.adapters.repositories.runs import PostgresRuns, PostgresWorkItems
from recurring.adapters.repositories.subscriptions import PostgresSubscriptions


class PostgresUnitOfWork:
    def __init__(self, conn: asyncpg.Connection, outbox: Outbox, messages: EventMessages) -> None:
        self._conn = conn
        self.subscriptions = PostgresSubscriptions(conn)
        self.runs = PostgresRuns(conn)
        self.items = PostgresWorkItems(conn)
        self.invoices = PostgresInvoices(conn)
        self.ledger = PostgresLedger(conn)
        self.outbox = PostgresOutbox(conn, outbox, messages)
        self.keys = PostgresIdempotencyKeys(conn)

    async def check_fence(self, lease: Lease) -> None:
        await db.check_fence(self._conn, lease)


class PostgresStore:
    def __init__(self, pool: asyncpg.Pool, outbox: Outbox, messages: EventMessages) -> None:
        self._pool = pool
        self._outbox = outbox
        self._messages = messages

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[PostgresUnitOfWork]:
        async with db.transaction(self._pool) as conn:
            yield PostgresUnitOfWork(conn, self._outbox, self._messages)

    def within(self, conn: asyncpg.Connection) -> PostgresUnitOfWork:
        return PostgresUnitOfWork(conn, self._outbox, self._messages)
