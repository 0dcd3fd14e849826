"""The outage counter, shared by every pod through Redis."""

from __future__ import annotations

from redis.asyncio import Redis


class RedisOutageCounter:
    """Consecutive unreachable results per run and gateway (reset by any answer that got through)."""

    TTL_S = 7 * 86400

    def __init__(self, redis: Redis, namespace: str) -> None:
        self._redis = redis
        self._namespace = namespace

    def _key(self, run_id: str, gateway: str) -> str:
        return f"{self._namespace}:outage:{run_id}:{gateway}"

    async def unreachable(self, run_id: str, gateway: str) -> int:
        key = self._key(run_id, gateway)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.incr(key)
            pipe.expire(key, self.TTL_S)
            count, _ = await pipe.execute()
        return int(count)

    async def reachable(self, run_id: str, gateway: str) -> None:
        await self._redis.delete(self._key(run_id, gateway))
