"""The hot counters in Redis: one atomic Lua script does the idempotency check and check-and-add.

Keys (hash-tagged by tenant so one tenant's keys share a cluster slot):
  <ns>:{<tenant>}:u:<key>:<period start epoch>   the usage counter of one window
  <ns>:{<tenant>}:id:<idempotency key>           "<key>|<delta>" of an event counted recently
Counters expire a while after their window ends and are rebuilt from PostgreSQL when missing;
idempotency entries expire after a day (PostgreSQL's unique key is the authority after that).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import datetime, timedelta

from redis.asyncio import Redis

from quota.app.ports import CounterOp, CounterRef, CounterResult, CounterStatus

ID_TTL_SECONDS = 86_400
COUNTER_KEEP_AFTER_END = timedelta(days=2)

# KEYS[1] counter, KEYS[2] idempotency entry; ARGV delta, limit (-1: none), fingerprint, id ttl.
# Returns {status, used}: 1 counted, 2 duplicate, 3 mismatch, 4 denied, 5 negative, 0 missing.
_RECORD = """
local used = redis.call('GET', KEYS[1])
if not used then return {0, 0} end
used = tonumber(used)
local seen = redis.call('GET', KEYS[2])
if seen then
  if seen == ARGV[3] then return {2, used} end
  return {3, used}
end
local delta = tonumber(ARGV[1])
local limit = tonumber(ARGV[2])
if used + delta < 0 then return {5, used} end
if limit >= 0 and delta > 0 and used + delta > limit then return {4, used} end
local after = redis.call('INCRBY', KEYS[1], delta)
redis.call('SET', KEYS[2], ARGV[3], 'EX', ARGV[4])
return {1, after}
"""

# Set a counter back (the ledger refused the event) and forget the idempotency entry.
_UNDO = """
if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('DECRBY', KEYS[1], ARGV[1]) end
if redis.call('GET', KEYS[2]) == ARGV[2] then redis.call('DEL', KEYS[2]) end
return 1
"""

_STATUS = {
    0: CounterStatus.MISSING,
    1: CounterStatus.COUNTED,
    2: CounterStatus.DUPLICATE,
    3: CounterStatus.MISMATCH,
    4: CounterStatus.DENIED,
    5: CounterStatus.NEGATIVE,
}


class RedisCounters:
    def __init__(self, redis: Redis, namespace: str) -> None:
        self._redis = redis
        self._namespace = namespace
        self._record = redis.register_script(_RECORD)
        self._undo = redis.register_script(_UNDO)
        self._reads: list[tuple[list[str], asyncio.Future[list[bytes | str | None]]]] = []
        self._reader: asyncio.Task[None] | None = None

    def counter_key(self, counter: CounterRef) -> str:
        start = int(counter.period_start.timestamp())
        return f"{self._namespace}:{{{counter.tenant_id}}}:u:{counter.key}:{start}"

    def id_key(self, tenant_id: str, idempotency_key: str) -> str:
        return f"{self._namespace}:{{{tenant_id}}}:id:{idempotency_key}"

    async def read(self, counters: Sequence[CounterRef]) -> list[int | None]:
        """Concurrent reads share one MGET round trip (checks are the hottest path)."""
        future: asyncio.Future[list[bytes | str | None]] = asyncio.get_running_loop().create_future()
        self._reads.append(([self.counter_key(c) for c in counters], future))
        if self._reader is None or self._reader.done():
            self._reader = asyncio.create_task(self._read_pending())
        return [None if v is None else int(v) for v in await future]

    async def _read_pending(self) -> None:
        while self._reads:
            batch, self._reads = self._reads, []
            keys = [key for item, _ in batch for key in item]
            try:
                values = await self._redis.mget(keys)
            except Exception as exc:  # every waiting check sees the failure
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            offset = 0
            for item, future in batch:
                if not future.done():
                    future.set_result(values[offset : offset + len(item)])
                offset += len(item)

    async def seed(self, counter: CounterRef, value: int) -> None:
        """Set a missing counter to the ledger's total; a counter that reappeared meanwhile wins."""
        expire_at: datetime | None = None
        if counter.period_end is not None:
            expire_at = counter.period_end + COUNTER_KEEP_AFTER_END
        await self._redis.set(self.counter_key(counter), value, nx=True, exat=expire_at)

    async def apply(self, ops: Sequence[CounterOp]) -> list[CounterResult]:
        if not ops:
            return []
        async with self._redis.pipeline(transaction=False) as pipe:
            for op in ops:
                await self._record(
                    keys=[
                        self.counter_key(op.counter),
                        self.id_key(op.counter.tenant_id, op.idempotency_key),
                    ],
                    args=[
                        op.delta,
                        -1 if op.deny_over is None else op.deny_over,
                        op.fingerprint,
                        ID_TTL_SECONDS,
                    ],
                    client=pipe,
                )
            replies = await pipe.execute()
        return [CounterResult(_STATUS[int(r[0])], int(r[1])) for r in replies]

    async def undo(self, ops: Sequence[CounterOp]) -> None:
        async with self._redis.pipeline(transaction=False) as pipe:
            for op in ops:
                await self._undo(
                    keys=[
                        self.counter_key(op.counter),
                        self.id_key(op.counter.tenant_id, op.idempotency_key),
                    ],
                    args=[op.delta, op.fingerprint],
                    client=pipe,
                )
            await pipe.execute()
