"""The outbox of recurring's events and the idempotency keys of its state-changing calls."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import asyncpg

from billing_common import idempotency, telemetry
from billing_common.events import Outbox
from billing_common.idempotency import IdempotencyKey
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
    """The shared claim / complete of billing_common.idempotency, on this unit of work's connection."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self._conn = conn

    async def claim(self, idem: IdempotencyKey) -> str | None:
        return await idempotency.claim(self._conn, idem)

    async def complete(self, idem: IdempotencyKey, answer: str) -> None:
        await idempotency.complete(self._conn, idem, answer)
