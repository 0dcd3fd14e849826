"""One scan of a kind at a time across all pods: a Redis lock per kind, with its fencing token."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from datetime import timedelta

from billing_common.locks import Lease, LockNotAcquired, RedisLocks
from tier.domain.scans import ScanKind


class RedisScanLocks:
    def __init__(self, locks: RedisLocks, ttl: timedelta) -> None:
        self._locks = locks
        self._ttl = ttl

    @contextlib.asynccontextmanager
    async def hold(self, kind: ScanKind) -> AsyncIterator[Lease | None]:
        async with contextlib.AsyncExitStack() as stack:
            try:
                lease: Lease | None = await stack.enter_async_context(
                    self._locks.hold(f"scan:{kind.value}", self._ttl)
                )
            except LockNotAcquired:
                lease = None
            yield lease
