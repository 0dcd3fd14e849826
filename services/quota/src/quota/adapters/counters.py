"""The hot counters in Redis: an atomic Lua script does the idempotency check and check-and-add.

Keys (hash-tagged by tenant so one tenant's keys share a cluster slot):
  <ns>:{<tenant>}:u:<key>:<period start epoch>   the usage counter of one window
  <ns>:{<tenant>}:id:<idempotency key>           "<key>|<delta>" of an event counted recently
Counters expire a while after their window ends and are rebuilt from PostgreSQL when missing;
idempotency entries expire after a day (PostgreSQL's unique key is the authority after that).
Reads are served from `TrackedReads` while Redis tracks them; every write here forgets its keys.
On a Redis Cluster the same scripts run on the tenant's node and reads ask the primaries
(`cluster.py`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Protocol

from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterPipeline, RedisCluster

from billing_common.grouping import GroupCommit
from quota.app.ports import CounterOp, CounterRef, CounterResult, CounterStatus, UsageMetrics

ID_TTL_SECONDS = 86_400
COUNTER_KEEP_AFTER_END = timedelta(days=2)
MAX_KEYS_KEPT = 65_536  # Redis keys of counters, built once each; all dropped at once when full

# Events of one tenant in order. KEYS: the call's distinct counters, then one idempotency entry
# per event. ARGV[1] id ttl, ARGV[2] number of counters, then one argument per event,
# "<counter index> <delta> <limit (-1: none)> <fingerprint>" (one argument instead of three:
# redis-py packs every argument in Python, which was a quarter of a batch's CPU).
# Returns {status, used} per event: 1 counted, 2 duplicate, 3 mismatch, 4 denied, 5 negative,
# 0 missing (the counter must be rebuilt first).
_RECORD = """
local ttl, counters = ARGV[1], tonumber(ARGV[2])
local out = {}
for i = 1, #ARGV - 2 do
  local c, d, l, fingerprint = string.match(ARGV[i + 2], '^(%d+) (%-?%d+) (%-?%d+) (.*)$')
  local counter, id = KEYS[tonumber(c)], KEYS[counters + i]
  local delta, limit = tonumber(d), tonumber(l)
  local status, used = 0, 0
  local current = redis.call('GET', counter)
  if current then
    used = tonumber(current)
    local seen = redis.call('GET', id)
    if seen then
      if seen == fingerprint then status = 2 else status = 3 end
    elseif used + delta < 0 then
      status = 5
    elseif limit >= 0 and delta > 0 and used + delta > limit then
      status = 4
    else
      used = redis.call('INCRBY', counter, delta)
      redis.call('SET', id, fingerprint, 'EX', ttl)
      status = 1
    end
  end
  out[2 * i - 1] = status
  out[2 * i] = used
end
return out
"""
# Events per script call: long enough to amortise the call, short enough not to stall Redis.
EVENTS_PER_CALL = 500

# Set a counter back (the ledger refused the event) and forget the idempotency entry, only while
# the entry is this event's: an undo done twice, or after Redis lost the keys, changes nothing.
_UNDO = """
if redis.call('GET', KEYS[2]) == ARGV[2] then
  if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('DECRBY', KEYS[1], ARGV[1]) end
  redis.call('DEL', KEYS[2])
end
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


class CounterReads(Protocol):
    """Where counter values are read: kept while Redis tracks them (`TrackedReads`), or always
    asked of Redis (`ClusterReads`)."""

    def cached(self, key: str) -> int | None: ...
    def forget(self, keys: Iterable[str]) -> None: ...
    async def fetch(self, keys: Sequence[str]) -> list[bytes | None]: ...


class RedisCounters:
    def __init__(
        self, redis: Redis | RedisCluster, namespace: str, tracked: CounterReads, metrics: UsageMetrics
    ) -> None:
        self._redis = redis
        self._metrics = metrics
        self._namespace = namespace
        self._tracked = tracked
        self._record = redis.register_script(_RECORD)
        self._undo = redis.register_script(_UNDO)
        self._keys: dict[CounterRef, str] = {}  # built once: checks look them up all the time
        self._reads = GroupCommit(tracked.fetch)

    def counter_key(self, counter: CounterRef) -> str:
        key = self._keys.get(counter)
        if key is None:
            if len(self._keys) >= MAX_KEYS_KEPT:
                self._keys.clear()
            start = int(counter.period_start.timestamp())
            key = self._keys[counter] = f"{self._namespace}:{{{counter.tenant_id}}}:u:{counter.key}:{start}"
        return key

    def id_key(self, tenant_id: str, idempotency_key: str) -> str:
        return f"{self._namespace}:{{{tenant_id}}}:id:{idempotency_key}"

    def known(self, counter: CounterRef) -> int | None:
        value = self._tracked.cached(self.counter_key(counter))
        self._metrics.counter_lookup(value is not None)
        return value

    async def read(self, counters: Sequence[CounterRef]) -> list[int | None]:
        """Tracked values first (no round trip); the rest in one MGET shared by concurrent reads."""
        keys = [self.counter_key(c) for c in counters]
        cached = self._tracked.cached
        values = [cached(key) for key in keys]
        if None not in values:
            return values
        missing = [key for key, value in zip(keys, values, strict=True) if value is None]
        fetched = dict(zip(missing, await self._reads.submit(missing), strict=True))
        return [
            value if value is not None else _int_or_none(fetched[key])
            for key, value in zip(keys, values, strict=True)
        ]

    async def seed(self, values: Mapping[CounterRef, int]) -> None:
        keys = []
        async with self._redis.pipeline(transaction=False) as pipe:
            for counter, value in values.items():
                expire_at: datetime | None = None
                if counter.period_end is not None:
                    expire_at = counter.period_end + COUNTER_KEEP_AFTER_END
                keys.append(self.counter_key(counter))
                pipe.set(keys[-1], value, nx=True, exat=expire_at)
            await pipe.execute()
        self._tracked.forget(keys)

    async def apply(self, ops: Sequence[CounterOp]) -> list[CounterResult]:
        if not ops:
            return []
        calls = _calls_by_tenant(ops)
        counter_keys: dict[CounterRef, str] = {}
        async with self._redis.pipeline(transaction=False) as pipe:
            for call in calls:
                counters: dict[str, int] = {}  # key -> its KEYS index (1-based, as in Lua)
                id_keys: list[str] = []
                events: list[str] = []
                for index in call:
                    op = ops[index]
                    key = counter_keys.get(op.counter)
                    if key is None:
                        key = counter_keys[op.counter] = self.counter_key(op.counter)
                    position = counters.setdefault(key, len(counters) + 1)
                    id_keys.append(self.id_key(op.counter.tenant_id, op.idempotency_key))
                    limit = -1 if op.deny_over is None else op.deny_over
                    events.append(f"{position} {op.delta} {limit} {op.fingerprint}")
                keys = [*counters, *id_keys]
                # On a cluster the scripts go as EVAL: a node that never saw them (a new or promoted
                # primary) runs them anyway, where EVALSHA in a cluster pipeline fails with NOSCRIPT.
                if isinstance(pipe, ClusterPipeline):
                    pipe.eval(_RECORD, len(keys), *keys, ID_TTL_SECONDS, len(counters), *events)
                else:
                    await self._record(keys=keys, args=[ID_TTL_SECONDS, len(counters), *events], client=pipe)
            replies = await pipe.execute()
        self._tracked.forget(counter_keys.values())
        results: list[CounterResult | None] = [None] * len(ops)
        for call, reply in zip(calls, replies, strict=True):
            for n, index in enumerate(call):
                results[index] = CounterResult(_STATUS[int(reply[2 * n])], int(reply[2 * n + 1]))
        return [r for r in results if r is not None]

    async def undo(self, ops: Sequence[CounterOp]) -> None:
        async with self._redis.pipeline(transaction=False) as pipe:
            for op in ops:
                keys = [self.counter_key(op.counter), self.id_key(op.counter.tenant_id, op.idempotency_key)]
                if isinstance(pipe, ClusterPipeline):
                    pipe.eval(_UNDO, len(keys), *keys, op.delta, op.fingerprint)
                else:
                    await self._undo(keys=keys, args=[op.delta, op.fingerprint], client=pipe)
            await pipe.execute()
        self._tracked.forget(self.counter_key(op.counter) for op in ops)

    async def held(self, ops: Sequence[CounterOp]) -> list[bool]:
        async with self._redis.pipeline(transaction=False) as pipe:
            for op in ops:
                pipe.get(self.id_key(op.counter.tenant_id, op.idempotency_key))
            found = await pipe.execute()
        return [value == op.fingerprint.encode() for op, value in zip(ops, found, strict=True)]


def _calls_by_tenant(ops: Sequence[CounterOp]) -> list[list[int]]:
    """Indexes of `ops` per script call: one tenant's events (one cluster slot), in their order."""
    by_tenant: dict[str, list[int]] = {}
    for index, op in enumerate(ops):
        by_tenant.setdefault(op.counter.tenant_id, []).append(index)
    return [
        indexes[start : start + EVENTS_PER_CALL]
        for indexes in by_tenant.values()
        for start in range(0, len(indexes), EVENTS_PER_CALL)
    ]


def _int_or_none(value: bytes | None) -> int | None:
    return None if value is None else int(value)
