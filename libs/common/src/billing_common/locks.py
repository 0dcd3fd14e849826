"""Per-service Redis locks: namespaced keys, TTL, extension while held, fencing tokens.

A lock only says who should work; correctness comes from the fencing token. Every holder gets a
number that only grows, from PostgreSQL (`billing_common.db.FencingTokens`, per lock name), not
from Redis: a flushed or failed-over Redis forgets its locks, never the tokens. The protected
write passes its lease to `billing_common.db.check_fence`, which refuses a holder older than one
that already wrote.

Use cases take locks through `try_hold` (the `Locks` protocol): a lease, or None when another
holder keeps the lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Protocol

from redis.asyncio import Redis

log = logging.getLogger(__name__)

_EXTEND = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class TokenSource(Protocol):
    async def next(self, resource: str) -> int:
        """A token above every one handed out for `resource` before."""
        ...

    async def next_many(self, resources: Sequence[str]) -> dict[str, int]:
        """`next` for each of several resources, in one round trip."""
        ...


@dataclass
class Lease:
    """Proof of holding a lock; `lost` is set when an extension failed."""

    name: str  # the lock's name, under which its fencing tokens are issued
    key: str
    owner: str
    fencing_token: int
    lost: asyncio.Event = field(default_factory=asyncio.Event)


class Locks(Protocol):
    """Locks as use cases see them."""

    def try_hold(
        self, name: str, ttl: timedelta, *, wait: timedelta = ...
    ) -> AbstractAsyncContextManager[Lease | None]: ...


class RedisLocks:
    """Factory of locks under one service's namespace: keys look like `<namespace>:<name>`."""

    def __init__(self, redis: Redis, namespace: str, tokens: TokenSource) -> None:
        self._redis = redis
        self._namespace = namespace
        self._tokens = tokens
        self._extend = redis.register_script(_EXTEND)
        self._release = redis.register_script(_RELEASE)

    def key(self, name: str) -> str:
        return f"{self._namespace}:{name}"

    async def try_acquire(self, name: str, ttl: timedelta) -> Lease | None:
        key = self.key(name)
        owner = secrets.token_hex(16)
        if not await self._redis.set(key, owner, nx=True, px=_ms(ttl)):
            return None
        try:
            token = await self._tokens.next(name)
        except BaseException:
            with contextlib.suppress(Exception):
                await self._release(keys=[key], args=[owner])
            raise
        return Lease(name, key, owner, token)

    async def extend(self, lease: Lease, ttl: timedelta) -> bool:
        return bool(await self._extend(keys=[lease.key], args=[lease.owner, _ms(ttl)]))

    async def release(self, lease: Lease) -> bool:
        return bool(await self._release(keys=[lease.key], args=[lease.owner]))

    async def try_acquire_many(self, names: Sequence[str], ttl: timedelta) -> dict[str, Lease]:
        """`try_acquire` for many locks in two round trips (Redis, then the tokens): the leases of
        those that were free, by name."""
        owner = secrets.token_hex(16)
        unique = sorted(set(names))
        async with self._redis.pipeline(transaction=False) as pipe:
            for name in unique:
                pipe.set(self.key(name), owner, nx=True, px=_ms(ttl))
            taken = await pipe.execute()
        free = [name for name, ok in zip(unique, taken, strict=True) if ok]
        if not free:
            return {}
        try:
            tokens = await self._tokens.next_many(free)
        except BaseException:
            with contextlib.suppress(Exception):
                await self._script_each(_RELEASE, [self.key(name) for name in free], owner, ())
            raise
        return {name: Lease(name, self.key(name), owner, tokens[name]) for name in free}

    @contextlib.asynccontextmanager
    async def try_hold_many(self, names: Sequence[str], ttl: timedelta) -> AsyncIterator[dict[str, Lease]]:
        """Hold those of `names` that are free for the block, extending them together every third
        of their TTL: a batch of work takes its locks in two round trips, not two per item."""
        leases = await self.try_acquire_many(names, ttl)
        keeper = asyncio.create_task(self._keep_many(list(leases.values()), ttl)) if leases else None
        try:
            yield leases
        finally:
            if keeper is not None:
                keeper.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await keeper
                with contextlib.suppress(Exception):
                    owner = next(iter(leases.values())).owner
                    await self._script_each(_RELEASE, [lease.key for lease in leases.values()], owner, ())

    async def _keep_many(self, leases: list[Lease], ttl: timedelta) -> None:
        interval = ttl.total_seconds() / 3
        while leases:
            await asyncio.sleep(interval)
            try:
                extended = await self._script_each(
                    _EXTEND, [lease.key for lease in leases], leases[0].owner, (_ms(ttl),)
                )
            except Exception:
                log.warning("lock extension failed", extra={"locks": len(leases)}, exc_info=True)
                extended = [0] * len(leases)
            for lease, still_ours in zip(list(leases), extended, strict=True):
                if not still_ours:
                    log.warning("lock lost", extra={"lock": lease.key, "fencing_token": lease.fencing_token})
                    lease.lost.set()
                    leases.remove(lease)

    async def _script_each(
        self, script: str, keys: Sequence[str], owner: str, args: Sequence[int]
    ) -> list[Any]:
        """Run `script` for each key with the owner (and `args`) in one pipelined round trip."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.eval(script, 1, key, owner, *args)
            return list(await pipe.execute())

    @contextlib.asynccontextmanager
    async def try_hold(
        self,
        name: str,
        ttl: timedelta,
        *,
        wait: timedelta = timedelta(0),
        retry_every: timedelta = timedelta(milliseconds=100),
    ) -> AsyncIterator[Lease | None]:
        """Hold `name` for the block, extending it every third of its TTL; None if it stays taken
        for longer than `wait`."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait.total_seconds()
        while (lease := await self.try_acquire(name, ttl)) is None:
            if loop.time() >= deadline:
                yield None
                return
            await asyncio.sleep(retry_every.total_seconds())
        keeper = asyncio.create_task(self._keep(lease, ttl))
        try:
            yield lease
        finally:
            keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keeper
            with contextlib.suppress(Exception):
                await self.release(lease)

    async def _keep(self, lease: Lease, ttl: timedelta) -> None:
        interval = ttl.total_seconds() / 3
        while True:
            await asyncio.sleep(interval)
            try:
                still_ours = await self.extend(lease, ttl)
            except Exception:
                log.warning("lock extension failed", extra={"lock": lease.key}, exc_info=True)
                still_ours = False
            if not still_ours:
                log.warning("lock lost", extra={"lock": lease.key, "fencing_token": lease.fencing_token})
                lease.lost.set()
                return


def _ms(ttl: timedelta) -> int:
    return max(1, int(ttl.total_seconds() * 1000))
