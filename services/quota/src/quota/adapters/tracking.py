"""Counter values kept in the process while Redis promises to say when they change.

A check that had to wait for Redis costs a quota pod about 1.7 times a trivial gRPC call, so
counters are read through Redis's client-side caching protocol (`CLIENT TRACKING`, default mode):
one connection reads (and Redis remembers which keys it read), a second one is subscribed to
`__redis__:invalidate`, where Redis announces every change to a key read since it was last
announced (a write from any pod, a Lua script, expiry, eviction, FLUSHALL). A value is served from
memory only until its announcement, so a check sees another pod's record as soon as this pod has
read Redis's message, sub-millisecond on one network, and this pod's own records at once (they
forget their keys locally).

Values are served only while both connections are up. Losing either, or a silent listener
(no heartbeat answer), forgets everything; reads then go to Redis directly until tracking is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable, Sequence
from typing import Any

from redis.asyncio import Redis

log = logging.getLogger(__name__)

INVALIDATE_CHANNEL = "__redis__:invalidate"
HEARTBEAT_S = 2.0
# A listener that hears nothing (not even its heartbeat's answer) for this long is presumed dead.
SILENCE_LIMIT_S = 3 * HEARTBEAT_S


class TrackedReads:
    def __init__(self, redis: Redis, namespace: str, max_entries: int) -> None:
        self._redis = redis
        # Connection names, so that operators (and tests) can tell them apart in CLIENT LIST.
        self.listener_name = f"{namespace}:tracking-listener"
        self.reader_name = f"{namespace}:tracking-reader"
        self._max_entries = max_entries
        self._values: dict[str, int] = {}
        self._fetching: dict[str, int] = {}  # key -> reads in flight
        self._changed_while_fetching: set[str] = set()
        self._reader: Any = None  # the tracked connection, set only while tracking is up
        self._listener: Any = None
        self._one_read = asyncio.Lock()

    @property
    def enabled(self) -> bool:
        return self._max_entries > 0

    def cached(self, key: str) -> int | None:
        return self._values.get(key)

    def forget(self, keys: Iterable[str]) -> None:
        """This process changed these keys: the next read must see the change."""
        for key in keys:
            self._values.pop(key, None)
            if key in self._fetching:
                self._changed_while_fetching.add(key)

    async def fetch(self, keys: Sequence[str]) -> list[bytes | None]:
        """MGET, through the tracked connection when tracking is up (the values are kept)."""
        reader = self._reader
        if reader is None:
            return await self._direct(keys)
        for key in keys:
            self._fetching[key] = self._fetching.get(key, 0) + 1
        try:
            async with self._one_read:
                await reader.send_command("MGET", *keys, check_health=False)
                values: list[bytes | None] = await reader.read_response()
            if self._reader is reader:
                self._keep(keys, values)
            return values
        except Exception:
            log.warning("tracked read failed; reading Redis directly until tracking is back", exc_info=True)
            await self._lost()
            return await self._direct(keys)
        finally:
            for key in keys:
                left = self._fetching.pop(key) - 1
                if left:
                    self._fetching[key] = left
                else:
                    self._changed_while_fetching.discard(key)

    async def _direct(self, keys: Sequence[str]) -> list[bytes | None]:
        values: list[Any] = await self._redis.mget(keys)  # bytes: responses are not decoded
        return values

    def _keep(self, keys: Sequence[str], values: Sequence[bytes | None]) -> None:
        for key, value in zip(keys, values, strict=True):
            if value is None or key in self._changed_while_fetching:
                continue
            if len(self._values) >= self._max_entries:
                self._values.pop(next(iter(self._values)))
            self._values[key] = int(value)

    async def track(self) -> None:
        """Background loop: set tracking up and apply Redis's announcements until a connection fails."""
        if not self.enabled:
            return
        pool: Any = self._redis.connection_pool  # redis-py leaves its connection API untyped
        # The listener speaks RESP2, where an announcement is a plain pub/sub message.
        listener = pool.connection_class(**{**pool.connection_kwargs, "protocol": 2})
        reader = pool.make_connection()
        heartbeat: asyncio.Task[None] | None = None
        try:
            await listener.connect()
            await listener.send_command("CLIENT", "SETNAME", self.listener_name, check_health=False)
            await listener.read_response()
            await listener.send_command("CLIENT", "ID", check_health=False)
            listener_id = await listener.read_response()
            await listener.send_command("SUBSCRIBE", INVALIDATE_CHANNEL, check_health=False)
            await listener.read_response()
            await reader.connect()
            await reader.send_command("CLIENT", "SETNAME", self.reader_name, check_health=False)
            await reader.read_response()
            await reader.send_command("CLIENT", "TRACKING", "ON", "REDIRECT", listener_id, check_health=False)
            await reader.read_response()
            self._values.clear()
            self._reader, self._listener = reader, listener
            log.info("counter tracking is up")
            heartbeat = asyncio.create_task(self._heartbeat(listener))
            while True:
                message = await listener.read_response(timeout=SILENCE_LIMIT_S)
                if message is None:  # redis-py answers a read that timed out with None
                    raise TimeoutError(f"tracking listener heard nothing for {SILENCE_LIMIT_S:.0f} s")
                self._announced(message)
        finally:
            if heartbeat is not None:
                heartbeat.cancel()
            await self._lost()
            with contextlib.suppress(Exception):
                await reader.disconnect()

    def _announced(self, message: Any) -> None:
        if not isinstance(message, list) or len(message) < 3 or message[0] != b"message":
            return  # subscription confirmations, heartbeat answers
        keys = message[2]
        if keys is None:  # FLUSHALL / FLUSHDB: everything changed
            self._values.clear()
            self._changed_while_fetching.update(self._fetching)
            return
        self.forget(key.decode() for key in keys)

    @staticmethod
    async def _heartbeat(listener: Any) -> None:
        """A PING now and then, answered on the listener, so that its silence means it is gone."""
        with contextlib.suppress(Exception):  # a broken listener is noticed by its reading loop
            while True:
                await asyncio.sleep(HEARTBEAT_S)
                await listener.send_command("PING", check_health=False)

    async def _lost(self) -> None:
        """Forget everything and stop serving values; the listener's loop ends and starts over."""
        self._reader = None
        self._values.clear()
        self._changed_while_fetching.update(self._fetching)
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(Exception):
                await listener.disconnect()
