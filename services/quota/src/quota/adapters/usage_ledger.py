"""Durable usage records in PostgreSQL; threshold alerts and their events in the same transaction."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import asyncpg

from billing.events.v1 import quota_pb2 as events
from billing_common.db import transaction
from billing_common.events import Outbox
from quota.app.ports import AppendStatus, CounterRef, TenantPeriod, ThresholdAlert, UsageRecord


def columns(records: Sequence[UsageRecord]) -> tuple[list[Any], ...]:
    """The records as the six arrays a ledger insert unnests, in the table's column order."""
    return (
        [r.tenant_id for r in records],
        [r.key for r in records],
        [r.delta for r in records],
        [r.idempotency_key for r in records],
        [r.occurred_at for r in records],
        [r.period_start for r in records],
    )


class PostgresUsageLedger:
    def __init__(self, pool: asyncpg.Pool, outbox: Outbox) -> None:
        self._pool = pool
        self._outbox = outbox

    async def append(
        self, records: Sequence[UsageRecord], alerts: Sequence[ThresholdAlert]
    ) -> list[AppendStatus]:
        """All records in one statement; a key already stored is reported, not stored again.

        The key is claimed in `usage_keys` (unique on tenant and key, whatever the time) and the
        record stored only if the claim is new: the ledger's partitions could not hold that key.
        """
        async with transaction(self._pool) as conn:
            inserted = await conn.fetch(
                """WITH batch AS (
                       SELECT DISTINCT ON (tenant_id, idempotency_key) * FROM unnest(
                           $1::text[], $2::text[], $3::bigint[], $4::text[],
                           $5::timestamptz[], $6::timestamptz[]
                       ) WITH ORDINALITY
                         AS b(tenant_id, key, delta, idempotency_key, occurred_at, period_start, n)
                       ORDER BY tenant_id, idempotency_key, n),
                   claimed AS (
                       INSERT INTO usage_keys (tenant_id, idempotency_key, occurred_at)
                       SELECT tenant_id, idempotency_key, occurred_at FROM batch
                       ON CONFLICT DO NOTHING
                       RETURNING tenant_id, idempotency_key)
                   INSERT INTO usage_records
                       (tenant_id, key, delta, idempotency_key, occurred_at, period_start)
                   SELECT tenant_id, key, delta, idempotency_key, occurred_at, period_start
                   FROM batch JOIN claimed USING (tenant_id, idempotency_key)
                   RETURNING tenant_id, idempotency_key""",
                *columns(records),
            )
            stored = {(r["tenant_id"], r["idempotency_key"]) for r in inserted}
            statuses: list[AppendStatus] = []
            existing: dict[tuple[str, str], str] = {}
            if len(stored) < len(records):
                rows = await conn.fetch(
                    """SELECT u.tenant_id, u.idempotency_key, u.key, u.delta
                       FROM unnest($1::text[], $2::text[]) AS k(tenant_id, idempotency_key)
                       JOIN usage_keys c USING (tenant_id, idempotency_key)
                       JOIN usage_records u USING (tenant_id, idempotency_key, occurred_at)""",
                    [r.tenant_id for r in records],
                    [r.idempotency_key for r in records],
                )
                existing = {(r["tenant_id"], r["idempotency_key"]): f"{r['key']}|{r['delta']}" for r in rows}
            for record in records:
                identity = (record.tenant_id, record.idempotency_key)
                if identity in stored:
                    stored.discard(identity)  # a key repeated inside the batch counts once
                    statuses.append(AppendStatus.STORED)
                elif existing.get(identity) == record.fingerprint:
                    statuses.append(AppendStatus.DUPLICATE)
                else:
                    statuses.append(AppendStatus.MISMATCH)
            kept = {
                (r.tenant_id, r.idempotency_key)
                for r, s in zip(records, statuses, strict=True)
                if s is AppendStatus.STORED
            }
            for alert in alerts:
                if (alert.tenant_id, alert.idempotency_key) in kept:
                    await self._alert_once(conn, alert)
        return statuses

    async def _alert_once(self, conn: asyncpg.Connection, alert: ThresholdAlert) -> None:
        first = await conn.fetchval(
            """INSERT INTO threshold_alerts (tenant_id, key, period_start, percent, used)
               VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING RETURNING true""",
            alert.tenant_id,
            alert.key,
            alert.period_start,
            alert.percent,
            alert.used,
        )
        if not first:
            return
        event = events.QuotaThresholdCrossed(
            tenant_id=alert.tenant_id,
            key=alert.key,
            threshold_percent=alert.percent,
            used=alert.used,
            limit=alert.limit,
        )
        event.period_start.FromDatetime(alert.period_start)
        if alert.period_end is not None:
            event.period_end.FromDatetime(alert.period_end)
        await self._outbox.add(conn, event)

    async def window_totals(self, counters: Sequence[CounterRef]) -> list[int]:
        rows = await self._pool.fetch(
            """SELECT c.i, (SELECT coalesce(sum(r.delta), 0) FROM usage_records r
                            WHERE r.tenant_id = c.tenant_id AND r.key = c.key
                              AND r.period_start = c.period_start) AS total
               FROM unnest($1::text[], $2::text[], $3::timestamptz[]) WITH ORDINALITY
                   AS c(tenant_id, key, period_start, i)""",
            [counter.tenant_id for counter in counters],
            [counter.key for counter in counters],
            [counter.period_start for counter in counters],
        )
        totals = [0] * len(counters)
        for row in rows:
            totals[row["i"] - 1] = int(row["total"])
        return totals

    async def totals(self, periods: Sequence[TenantPeriod]) -> list[dict[str, int]]:
        rows = await self._pool.fetch(
            """SELECT p.i, r.key, sum(r.delta) AS quantity
               FROM unnest($1::text[], $2::timestamptz[], $3::timestamptz[]) WITH ORDINALITY
                   AS p(tenant_id, start_at, end_at, i)
               JOIN usage_records r ON r.tenant_id = p.tenant_id
                   AND r.occurred_at >= p.start_at AND r.occurred_at < p.end_at
               GROUP BY p.i, r.key""",
            [period.tenant_id for period in periods],
            [period.start for period in periods],
            [period.end for period in periods],
        )
        totals: list[dict[str, int]] = [{} for _ in periods]
        for row in rows:
            totals[row["i"] - 1][row["key"]] = int(row["quantity"])
        return totals
