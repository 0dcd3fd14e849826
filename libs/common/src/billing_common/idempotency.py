"""Idempotency keys of state-changing calls: claim, complete, replay, one way for every service.

A call claims its key in the transaction that does its work and completes it there with a
reference to its answer, so the key and the work commit or roll back together. A second call
with the key then meets one of three cases: the first call finished (its answer is replayed, the
work is not done again), it is still in flight (`KeyInFlight`, ABORTED: retry with the same key),
or the key came with another request (`KeyReused`, FAILED_PRECONDITION). Requests are told apart
by a fingerprint of everything but the key (`protos.request_hash`).

The rows live in `idempotent_calls`, one of the common tables every service's schema has.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import asyncpg

from billing_common.errors import KeyInFlight, KeyReused
from billing_common.protos import request_hash

if TYPE_CHECKING:
    from google.protobuf.message import Message

# The field every request that takes an idempotency key names it by.
KEY_FIELD = "idempotency_key"


@dataclass(frozen=True)
class IdempotencyKey:
    """A caller's key for one use case (`scope`) and the fingerprint of the request it came with."""

    scope: str
    key: str
    fingerprint: str

    @classmethod
    def of(cls, scope: str, request: Message) -> IdempotencyKey:
        """The key of a request that has an `idempotency_key` field; its fingerprint leaves the key out."""
        key: str = getattr(request, KEY_FIELD)
        return cls(scope, key, request_hash(request))


async def claim(conn: asyncpg.Connection, idem: IdempotencyKey) -> str | None:
    """None when the key is new: this transaction holds it, does the work, then `complete`s it.

    Otherwise the finished call's answer, to replay; `KeyInFlight` while another transaction holds
    the key (it is not waited for) or a claim committed without its answer; `KeyReused` when the
    key came with a different request.
    """
    held = await conn.fetchval(
        "SELECT pg_try_advisory_xact_lock(hashtextextended($1, 0))", f"idempotency:{idem.scope}:{idem.key}"
    )
    if not held:
        raise KeyInFlight(idem.key)
    inserted = await conn.fetchval(
        """INSERT INTO idempotent_calls (scope, key, fingerprint) VALUES ($1, $2, $3)
           ON CONFLICT DO NOTHING RETURNING true""",
        idem.scope,
        idem.key,
        idem.fingerprint,
    )
    if inserted:
        return None
    row = await conn.fetchrow(
        "SELECT fingerprint, answer FROM idempotent_calls WHERE scope = $1 AND key = $2", idem.scope, idem.key
    )
    assert row is not None
    if row["fingerprint"] != idem.fingerprint:
        raise KeyReused(idem.key)
    if row["answer"] is None:
        raise KeyInFlight(idem.key)
    return str(row["answer"])


async def complete(conn: asyncpg.Connection, idem: IdempotencyKey, answer: str) -> None:
    """Store the answer a later call with the key replays (a reference to what the call made)."""
    updated = await conn.fetchval(
        """UPDATE idempotent_calls SET answer = $4
           WHERE scope = $1 AND key = $2 AND fingerprint = $3 AND answer IS NULL RETURNING true""",
        idem.scope,
        idem.key,
        idem.fingerprint,
        answer,
    )
    if not updated:
        raise RuntimeError(f"idempotency key {idem.key!r} was completed without being claimed in this call")
