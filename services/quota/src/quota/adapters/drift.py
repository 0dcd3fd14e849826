"""Counters against the usage ledger: the two must agree, and an SRE is paged when they do not.

Every few minutes the most recently used counters are read from Redis and compared with the sum
of their window in `usage_records`. A record is added to Redis before its row commits, so a
counter may run ahead for a moment; only a difference seen twice, a few seconds apart, counts.
A counter missing from Redis is not drift (it is rebuilt from the ledger when next read).
"""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta

import asyncpg
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from quota.adapters.counters import RedisCounters
from quota.app.ports import CounterRef, UsageMetrics

log = logging.getLogger(__name__)

AUDIT_INTERVAL = timedelta(minutes=5)
RECHECK_AFTER = timedelta(seconds=3)
# The newest records the audit looks at, and the most counters it compares.
RECENT_RECORDS = 50_000
MAX_COUNTERS = 500


class CounterAudit:
    def __init__(
        self, pool: asyncpg.Pool, redis: Redis | RedisCluster, counters: RedisCounters, metrics: UsageMetrics
    ) -> None:
        self._pool = pool
        self._metrics = metrics
        self._redis = redis
        self._counters = counters

    async def audit(self) -> None:
        async with self._pool.acquire() as conn:
            rows = await conn.fetch(
                """SELECT DISTINCT tenant_id, key, period_start FROM usage_records
                   WHERE id > (SELECT coalesce(max(id), 0) - $1 FROM usage_records) LIMIT $2""",
                RECENT_RECORDS,
                MAX_COUNTERS,
            )
        counters = [CounterRef(r["tenant_id"], r["key"], r["period_start"], None) for r in rows]
        differing = await self._differences(counters)
        if differing:
            await asyncio.sleep(RECHECK_AFTER.total_seconds())
            again = await self._differences(list(differing))
            differing = {c: d for c, d in again.items() if differing.get(c) == d}
        self._metrics.counters_audited(len(counters), len(differing), sum(abs(d) for d in differing.values()))
        for counter, difference in differing.items():
            log.warning(
                "counter differs from the usage ledger",
                extra={
                    "tenant_id": counter.tenant_id,
                    "key": counter.key,
                    "period_start": counter.period_start.isoformat(),
                    "redis_minus_ledger": difference,
                },
            )

    async def _differences(self, counters: list[CounterRef]) -> dict[CounterRef, int]:
        if not counters:
            return {}
        keys = [self._counters.counter_key(c) for c in counters]
        # A cluster spreads tenants over slots: one MGET per slot there.
        if isinstance(self._redis, RedisCluster):
            values = await self._redis.mget_nonatomic(keys)
        else:
            values = await self._redis.mget(keys)
        async with self._pool.acquire() as conn:
            rows = await conn.fetch(
                """SELECT u.tenant_id, u.key, u.period_start, sum(u.delta) AS total FROM usage_records u
                   JOIN unnest($1::text[], $2::text[], $3::timestamptz[]) AS c(tenant_id, key, period_start)
                     USING (tenant_id, key, period_start)
                   GROUP BY u.tenant_id, u.key, u.period_start""",
                [c.tenant_id for c in counters],
                [c.key for c in counters],
                [c.period_start for c in counters],
            )
        ledger = {(r["tenant_id"], r["key"], r["period_start"]): int(r["total"]) for r in rows}
        found: dict[CounterRef, int] = {}
        for counter, value in zip(counters, values, strict=True):
            if value is None:
                continue
            difference = int(value) - ledger.get((counter.tenant_id, counter.key, counter.period_start), 0)
            if difference:
                found[counter] = difference
        return found
