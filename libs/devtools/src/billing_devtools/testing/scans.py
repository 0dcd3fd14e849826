"""How a pool's statements read their tables, from PostgreSQL's cumulative statistics: a test that a
keyed statement keeps finding its rows through an index as the table grows."""

from __future__ import annotations

import asyncpg

from billing_common import db


async def rows_scanned(pool: asyncpg.Pool, tables_like: str) -> int:
    """Rows read by sequential scans so far from the tables of the pool's schema whose names are
    like `tables_like` (an outbox's partitions: 'outbox%'). Counts the statements of the pool's
    connection still pending in its backend: give the pool one connection."""
    async with db.connection(pool) as conn:
        await conn.execute("SELECT pg_stat_force_next_flush()")
        await conn.execute("SELECT pg_stat_clear_snapshot()")
        scanned = await conn.fetchval(
            """SELECT coalesce(sum(seq_tup_read), 0) FROM pg_stat_user_tables
               WHERE schemaname = current_schema() AND relname LIKE $1""",
            tables_like,
        )
        return int(scanned)
