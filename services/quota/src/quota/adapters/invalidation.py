"""Entitlement cache invalidation across processes, over Redis pub/sub (on a cluster, a message
published on any node reaches the subscribers of every node)."""

from __future__ import annotations

import logging
from collections.abc import Callable

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

log = logging.getLogger(__name__)
EVERYONE = "*"


class RedisInvalidations:
    def __init__(self, redis: Redis | RedisCluster, namespace: str) -> None:
        self._redis = redis
        self.channel = f"{namespace}:entitlements:changed"

    async def publish(self, tenant_id: str | None) -> None:
        await self._redis.publish(self.channel, tenant_id or EVERYONE)

    async def listen(self, invalidate: Callable[[str | None], None]) -> None:
        """Apply every broadcast to this process's cache (a supervised background loop)."""
        pubsub = self._redis.pubsub()
        try:
            await pubsub.subscribe(self.channel)
            # Whatever changed while not subscribed is unknown: start from nothing.
            invalidate(None)
            async for message in pubsub.listen():
                if message.get("type") != "message":
                    continue
                tenant = message["data"].decode()
                invalidate(None if tenant == EVERYONE else tenant)
        finally:
            await pubsub.aclose()  # type: ignore[no-untyped-call]
