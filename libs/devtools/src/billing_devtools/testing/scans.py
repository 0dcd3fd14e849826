"""How many rows a pool's statements read, from PostgreSQL's cumulative statistics: a test that a
keyed statement reads its own rows, not the whole table, as the table grows."""

from __future__ import annotations

import asyncpg

from billing_common import db


async def rows_read(pool: asyncpg.Pool, tables_like: str) -> int:
    """Rows read so far, by sequential and index scans, from the tables of the pool's schema whose
    names are like `tables_like` (an outbox's partitions: 'outbox%'). Counts the statements of the
    pool's connection still pending in its backend: give the pool one connection."""
    async with db.connection(pool) as conn:
        await conn.execute("SELECT pg_stat_force_next_flush()")
        await conn.execute("SELECT pg_stat_clear_snapshot()")
        scanned = await conn.fetchval(
            """SELECT coalesce(sum(seq_tup_read + coalesce(idx_tup_fetch, 0)), 0) FROM pg_stat_user_tables
               WHERE schemaname = current_schema() AND relname LIKE $1""",
            tables_like,
        )
        return int(scanned)
