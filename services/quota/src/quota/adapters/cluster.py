"""Quota's counters on a Redis Cluster (`QUOTA_REDIS_CLUSTER=true`).

redis-py's cluster client routes every command by its keys' slot. A tenant's keys share one slot
(the `{tenant}` hash tag), so one record script call touches one node and stays atomic; counter
reads are grouped per slot. Counter tracking (client-side caching, `tracking.py`) is per node and
would have to follow slot moves and failovers; on a cluster it is off, and every check reads the
counters from their primaries (concurrent checks share one round of reads), so checks see every
record acknowledged before them, as they do on one server without the cache.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from redis.asyncio.cluster import RedisCluster


class ClusterReads:
    """Counter reads on a Redis Cluster: nothing kept in the process, every read asks the primary."""

    def __init__(self, redis: RedisCluster) -> None:
        self._redis = redis

    def cached(self, key: str) -> int | None:
        return None

    def forget(self, keys: Iterable[str]) -> None:
        """Nothing is kept, so nothing is forgotten."""

    async def fetch(self, keys: Sequence[str]) -> list[bytes | None]:
        """One MGET per slot, pipelined to each slot's primary; values in the order of `keys`."""
        values: list[Any] = await self._redis.mget_nonatomic(keys)
        return values
