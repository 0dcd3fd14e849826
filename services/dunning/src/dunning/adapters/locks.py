"""One Redis lock per case, so only one worker at a time calls recurring for it."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from datetime import timedelta

from billing_common.locks import LockNotAcquired, RedisLocks


class RedisCaseLocks:
    def __init__(self, locks: RedisLocks, ttl: timedelta) -> None:
        self._locks = locks
        self._ttl = ttl

    @contextlib.asynccontextmanager
    async def hold(self, case_id: str) -> AsyncIterator[int | None]:
        async with contextlib.AsyncExitStack() as stack:
            try:
                lease = await stack.enter_async_context(self._locks.hold(f"case:{case_id}", self._ttl))
            except LockNotAcquired:
                yield None
                return
            yield lease.fencing_token
