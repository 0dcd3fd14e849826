"""Idempotency keys of state-changing calls, claimed in the transaction that does the work."""

from __future__ import annotations

import asyncpg

from billing_common.errors import FailedPrecondition
from quota.app.ports import IdempotencyRef


async def claim(conn: asyncpg.Connection, idem: IdempotencyRef) -> str | None:
    """None when the key is new (the caller does the work); else the earlier result's reference.

    A concurrent call with the same key waits on the row lock until the first one commits.
    """
    inserted = await conn.fetchval(
        """INSERT INTO idempotency_keys (scope, key, request_hash, result_ref) VALUES ($1, $2, $3, '')
           ON CONFLICT DO NOTHING RETURNING true""",
        idem.scope,
        idem.key,
        idem.request_hash,
    )
    if inserted:
        return None
    row = await conn.fetchrow(
        "SELECT request_hash, result_ref FROM idempotency_keys WHERE scope = $1 AND key = $2",
        idem.scope,
        idem.key,
    )
    assert row is not None
    if row["request_hash"] != idem.request_hash:
        raise FailedPrecondition(f"idempotency key {idem.key!r} was used with a different request")
    return str(row["result_ref"])


async def complete(conn: asyncpg.Connection, idem: IdempotencyRef, result_ref: str) -> None:
    await conn.execute(
        "UPDATE idempotency_keys SET result_ref = $3 WHERE scope = $1 AND key = $2",
        idem.scope,
        idem.key,
        result_ref,
    )
