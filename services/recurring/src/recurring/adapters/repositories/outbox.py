"""The outbox of recurring's events and the idempotency keys of its state-changing calls."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import asyncpg

from billing_common import telemetry
from billing_common.errors import FailedPrecondition
from billing_common.events import Outbox
from recurring.adapters.events import EventMessages
from recurring.domain.events import Event


class PostgresOutbox:
    def __init__(self, conn: asyncpg.Connection, outbox: Outbox, messages: EventMessages) -> None:
        self._conn = conn
        self._outbox = outbox
        self._messages = messages

    async def add(self, events: Sequence[Event], traces: Sequence[Mapping[str, str]] = ()) -> None:
        """`traces`: the stored trace each event is written under ({} or none: the current one)."""
        if not traces:
            await self._outbox.add_many(self._conn, [self._messages.message(event) for event in events])
            return
        groups: dict[tuple[tuple[str, str], ...], list[Event]] = {}
        for event, trace in zip(events, traces, strict=True):
            groups.setdefault(tuple(sorted(trace.items())), []).append(event)
        for trace_items, grouped in groups.items():
            with telemetry.within(dict(trace_items)):
                await self._outbox.add_many(self._conn, [self._messages.message(event) for event in grouped])


class PostgresIdempotencyKeys:
    def __init__(self, conn: asyncpg.Connection) -> None:
        self._conn = conn

    async def claim(self, scope: str, key: str, request_hash: str) -> str | None:
        inserted = await self._conn.fetchval(
            """INSERT INTO idempotency_keys (scope, key, request_hash) VALUES ($1, $2, $3)
               ON CONFLICT DO NOTHING RETURNING true""",
            scope,
            key,
            request_hash,
        )
        if inserted:
            return None
        row = await self._conn.fetchrow(
            "SELECT request_hash, result_ref FROM idempotency_keys WHERE scope = $1 AND key = $2", scope, key
        )
        assert row is not None
        if row["request_hash"] != request_hash:
            raise FailedPrecondition(f"idempotency key {key!r} was used with a different request")
        return str(row["result_ref"])

    async def complete(self, scope: str, key: str, result_ref: str) -> None:
        await self._conn.execute(
            "UPDATE idempotency_keys SET result_ref = $3 WHERE scope = $1 AND key = $2",
            scope,
            key,
            result_ref,
        )
