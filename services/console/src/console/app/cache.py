"""A short-lived, tagged cache of the services' answers, so people navigating do not re-fetch.

Entries live `ttl` at most; an event (or the console's own action) drops the entries whose tags it
names at once (see domain/invalidation.py). One cache per pod, in memory: each pod hears every
event on its own queue. Concurrent misses of one key share a single load.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any


@dataclass
class _Entry:
    value: Any
    expires: float
    tags: frozenset[str]


class ReadCache:
    def __init__(self, ttl_s: float, monotonic: Callable[[], float], max_entries: int = 20_000) -> None:
        self._ttl_s = ttl_s
        self._monotonic = monotonic
        self._max_entries = max_entries
        self._entries: dict[str, _Entry] = {}
        self._by_tag: dict[str, set[str]] = {}
        self._loading: dict[str, asyncio.Future[Any]] = {}
        # A counter per tag: a load that began before its tag was invalidated is not stored.
        self._stamps: dict[str, int] = {}
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    async def get(self, key: str, tags: frozenset[str], load: Callable[[], Awaitable[Any]]) -> Any:
        entry = self._entries.get(key)
        if entry is not None and entry.expires > self._monotonic():
            self.hits += 1
            return entry.value
        pending = self._loading.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        self.misses += 1
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._loading[key] = future
        generation = self._generation(tags)
        try:
            value = await load()
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: a failed load is not kept, the next read tries again
            raise
        finally:
            del self._loading[key]
        future.set_result(value)
        if generation == self._generation(tags):  # not invalidated while it loaded
            self._put(key, tags, value)
        return value

    def invalidate(self, tags: Iterable[str]) -> int:
        """Drop every entry carrying one of `tags`; returns how many went."""
        dropped = 0
        for tag in tags:
            self._stamps[tag] = self._stamps.get(tag, 0) + 1
            for key in self._by_tag.pop(tag, set()):
                if self._remove(key):
                    dropped += 1
        return dropped

    def _generation(self, tags: frozenset[str]) -> tuple[int, ...]:
        return tuple(self._stamps.get(tag, 0) for tag in sorted(tags))

    def _put(self, key: str, tags: frozenset[str], value: Any) -> None:
        if len(self._entries) >= self._max_entries:
            self._evict_expired_or_oldest()
        self._remove(key)
        self._entries[key] = _Entry(value, self._monotonic() + self._ttl_s, tags)
        for tag in tags:
            self._by_tag.setdefault(tag, set()).add(key)

    def _remove(self, key: str) -> bool:
        entry = self._entries.pop(key, None)
        if entry is None:
            return False
        for tag in entry.tags:
            keys = self._by_tag.get(tag)
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del self._by_tag[tag]
        return True

    def _evict_expired_or_oldest(self) -> None:
        now = self._monotonic()
        expired = [key for key, entry in self._entries.items() if entry.expires <= now]
        for key in expired or list(self._entries)[: max(1, len(self._entries) // 10)]:
            self._remove(key)
