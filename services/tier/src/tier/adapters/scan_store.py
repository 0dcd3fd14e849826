"""Scan records in PostgreSQL; a queued row is the unit of work that a worker claims."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import datetime

import asyncpg

from billing_common.db import check_fence, connection, transaction
from billing_common.errors import KeyReused
from billing_common.locks import Lease
from billing_common.suite_clock import DueWork
from tier.domain.scans import Scan, ScanKind, ScanState

_COLUMNS = """seq, scan_id, kind, trigger, state, queued_at, started_at, finished_at, accounts_evaluated,
    changes, trace_id, error"""


def _scan(row: asyncpg.Record) -> Scan:
    return Scan(
        scan_id=str(row["scan_id"]),
        kind=ScanKind(row["kind"]),
        trigger=row["trigger"],
        state=ScanState(row["state"]),
        queued_at=row["queued_at"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        accounts_evaluated=row["accounts_evaluated"],
        changes=row["changes"],
        trace_id=row["trace_id"],
        error=row["error"],
    )


class PostgresScans:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def enqueue(
        self,
        kind: ScanKind,
        trigger: str,
        idempotency_key: str,
        queued_at: datetime,
        trace_id: str,
        trace_context: dict[str, str],
    ) -> tuple[Scan, bool]:
        async with connection(self._pool) as conn:
            row = await conn.fetchrow(
                f"""INSERT INTO scans (scan_id, kind, trigger, idempotency_key, state, queued_at, trace_id,
                                       trace_context)
                    VALUES ($1, $2, $3, $4, 'queued', $5, $6, $7)
                    ON CONFLICT (idempotency_key) DO NOTHING RETURNING {_COLUMNS}""",
                uuid.uuid4(),
                kind.value,
                trigger,
                idempotency_key,
                queued_at,
                trace_id,
                trace_context,
            )
            if row is not None:
                return _scan(row), True
            row = await conn.fetchrow(
                f"SELECT {_COLUMNS} FROM scans WHERE idempotency_key = $1", idempotency_key
            )
        assert row is not None
        scan = _scan(row)
        if scan.kind is not kind:
            raise KeyReused(idempotency_key, "scan", ("kind",))
        return scan, False

    async def queued_kinds(self) -> list[ScanKind]:
        async with connection(self._pool) as conn:
            rows = await conn.fetch(
                "SELECT kind FROM scans WHERE state = 'queued' GROUP BY kind ORDER BY min(seq)"
            )
        return [ScanKind(row["kind"]) for row in rows]

    async def claim(
        self, kind: ScanKind, started_at: datetime, lease: Lease
    ) -> tuple[Scan, dict[str, str]] | None:
        async with transaction(self._pool) as conn:
            await check_fence(conn, lease)
            # Only the lock holder runs scans of this kind: one still marked running lost its worker.
            await conn.execute(
                """UPDATE scans SET state = 'failed', finished_at = $2,
                       error = 'abandoned: its worker stopped or lost the scan lock'
                   WHERE kind = $1 AND state = 'running'""",
                kind.value,
                started_at,
            )
            row = await conn.fetchrow(
                f"""UPDATE scans SET state = 'running', started_at = $2, fencing_token = $3
                    WHERE scan_id = (SELECT scan_id FROM scans WHERE kind = $1 AND state = 'queued'
                                     ORDER BY seq LIMIT 1 FOR UPDATE SKIP LOCKED)
                    RETURNING {_COLUMNS}, trace_context""",
                kind.value,
                started_at,
                lease.fencing_token,
            )
        if row is None:
            return None
        return _scan(row), dict(row["trace_context"] or {})

    async def finish(self, scan: Scan) -> None:
        async with connection(self._pool) as conn:
            await conn.execute(
                """UPDATE scans SET state = $2, finished_at = $3, accounts_evaluated = $4, changes = $5,
                       error = $6
                   WHERE scan_id = $1 AND state = 'running'""",
                uuid.UUID(scan.scan_id),
                scan.state.value,
                scan.finished_at,
                scan.accounts_evaluated,
                scan.changes,
                scan.error,
            )

    async def get(self, scan_id: str) -> Scan | None:
        try:
            key = uuid.UUID(scan_id)
        except ValueError:
            return None
        async with connection(self._pool) as conn:
            row = await conn.fetchrow(f"SELECT {_COLUMNS} FROM scans WHERE scan_id = $1", key)
        return None if row is None else _scan(row)

    async def page(self, before_seq: int, limit: int) -> list[tuple[int, Scan]]:
        async with connection(self._pool) as conn:
            rows = await conn.fetch(
                f"SELECT {_COLUMNS} FROM scans WHERE ($1 = 0 OR seq < $1) ORDER BY seq DESC LIMIT $2",
                before_seq,
                limit,
            )
        return [(row["seq"], _scan(row)) for row in rows]


def unfinished_scans(pool: asyncpg.Pool) -> DueWork:
    """Scans queued or running, for the suite's test clock to wait on."""

    async def due(_now: datetime) -> Mapping[str, int]:
        async with connection(pool) as conn:
            count = await conn.fetchval("SELECT count(*) FROM scans WHERE state IN ('queued', 'running')")
        return {"unfinished scans": int(count)}

    return due
