"""Usage ledger writes: records/s stored by quota's ledger, partitioned by month with its
idempotency keys in `usage_keys` (migration 0002), as a ratio to the one-table ledger it replaced
(migration 0001, unique on tenant and key), in the same run.

Both start with the same 13 months of history and take the same batches of new records (the
RecordUsageBatch path after the counters); short rounds alternate between them, so a change in
this shared machine's speed falls on both alike.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import asyncpg

from bench.harness import bench_env
from billing_common import db, partitions
from billing_common.clock import SystemClock
from billing_common.events import Outbox
from billing_common.partitions import Step, TimePartitioned
from billing_common.service import run_event_loop
from billing_devtools.testing.plugin import InfraEnv
from quota.adapters.usage_ledger import PostgresUsageLedger, columns
from quota.app.ports import UsageRecord
from quota.entrypoints.main import MIGRATIONS

HISTORY = 260_000  # records over the 13 months before now: 20,000 a month
TENANTS = 500
BATCH = 500
BATCHES_PER_ROUND = 8
ROUNDS = 12

ONE_TABLE_INSERT = """INSERT INTO usage_records
        (tenant_id, key, delta, idempotency_key, occurred_at, period_start)
    SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[], $4::text[],
                         $5::timestamptz[], $6::timestamptz[])
    ON CONFLICT (tenant_id, idempotency_key) DO NOTHING
    RETURNING tenant_id, idempotency_key"""


async def _ledger_schema(env: InfraEnv, name: str, migrations: Sequence[db.Migration]) -> str:
    schema = f"{name}_{env.run_id}"
    env.schemas.append(schema)
    await db.provision(env.infra.postgres_admin_url, schema, schema)
    conn = await asyncpg.connect(db.dsn_with_user(env.infra.postgres_admin_url, schema))
    try:
        await db.migrate(conn, schema, [*db.common_migrations(), *migrations])
        history = """SELECT 't' || (n % $2::int), 'calls', 1, 'h' || n, at, date_trunc('month', at)
                     FROM generate_series(1, $3) AS n,
                          LATERAL (SELECT $1::timestamptz - (n % 395) * interval '1 day') AS t(at)"""
        columns = "(tenant_id, key, delta, idempotency_key, occurred_at, period_start)"
        now = datetime.now(UTC)
        await conn.execute(f"INSERT INTO usage_records {columns} {history}", now, TENANTS, HISTORY)
        if await conn.fetchval("SELECT to_regclass('usage_keys') IS NOT NULL"):
            await conn.execute(
                "INSERT INTO usage_keys SELECT tenant_id, idempotency_key, occurred_at FROM usage_records"
            )
            usage = TimePartitioned("usage_records", "occurred_at", Step.MONTH, timedelta(days=400))
            await partitions.maintain(conn, schema, [usage], now)
        await conn.execute("VACUUM ANALYZE")
    finally:
        await conn.close()
    return schema


def _batch(round_index: int, number: int) -> list[UsageRecord]:
    now = datetime.now(UTC)
    start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    prefix = f"{round_index}-{number}-{uuid.uuid4().hex[:8]}"
    return [UsageRecord(f"t{i % TENANTS}", "calls", 1, f"{prefix}-{i}", now, start) for i in range(BATCH)]


async def _one_table(pool: asyncpg.Pool, records: list[UsageRecord]) -> None:
    async with db.transaction(pool) as conn:
        stored = await conn.fetch(ONE_TABLE_INSERT, *columns(records))
    assert len(stored) == len(records)


async def main() -> None:
    async with bench_env() as env:
        before_partitions = [m for m in db.migrations_in(MIGRATIONS) if m.version.startswith("0001")]
        one_table = await _ledger_schema(env, "ledger_one", before_partitions)
        partitioned = await _ledger_schema(env, "ledger_parts", db.migrations_in(MIGRATIONS))
        one_pool, parts_pool = await env.pool(one_table), await env.pool(partitioned)
        ledger = PostgresUsageLedger(parts_pool, Outbox("quota", SystemClock()))
        elapsed = {"one table": 0.0, "partitioned": 0.0}
        try:
            for round_index in range(ROUNDS):
                for name in sorted(elapsed, reverse=round_index % 2 == 1):
                    began = time.perf_counter()
                    for number in range(BATCHES_PER_ROUND):
                        records = _batch(round_index, number)
                        if name == "one table":
                            await _one_table(one_pool, records)
                        else:
                            await ledger.append(records, [])
                    elapsed[name] += time.perf_counter() - began
        finally:
            await one_pool.close()
            await parts_pool.close()
        stored = ROUNDS * BATCHES_PER_ROUND * BATCH
        rates = {name: stored / seconds for name, seconds in elapsed.items()}
        for name, rate in rates.items():
            print(f"usage ledger, {name:<12} {rate:9.0f} records/s  ({stored} records in batches of {BATCH})")
        print(f"partitioned / one table: {rates['partitioned'] / rates['one table']:.2f}")


if __name__ == "__main__":
    run_event_loop(main())
