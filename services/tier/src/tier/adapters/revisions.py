"""Revisions: every write stamps its rows with one number from `estate_revision`, taken under a
shared advisory lock; a reader takes the lock exclusively for an instant to learn the highest
number whose writer has certainly committed, so an incremental refresh never skips a row."""

from __future__ import annotations

import asyncpg

from billing_common.db import transaction

_LOCK_KEY = "tier:estate-revision"


async def stamp(conn: asyncpg.Connection) -> int:
    """A fresh revision for the rows this transaction writes (call inside the transaction)."""
    await conn.execute("SELECT pg_advisory_xact_lock_shared(hashtextextended($1, 0))", _LOCK_KEY)
    return int(await conn.fetchval("SELECT nextval('estate_revision')"))


async def committed_horizon(pool: asyncpg.Pool) -> int:
    """The highest revision such that every write stamped at or below it has committed."""
    async with transaction(pool) as conn:
        await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", _LOCK_KEY)
        row = await conn.fetchrow("SELECT last_value, is_called FROM estate_revision")
        assert row is not None
        return int(row["last_value"]) if row["is_called"] else 0
