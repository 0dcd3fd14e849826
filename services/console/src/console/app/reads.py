"""The services' answers through the cache: the one way the console's pages read."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from billing_common.errors import NotFound
from console.app.cache import ReadCache
from console.app.ports import Record, Services
from console.domain.invalidation import event_tags, ids_in, read_tags


class CachedReads:
    def __init__(self, services: Services, cache: ReadCache, page_size: int) -> None:
        self._services = services
        self._cache = cache
        # The most records a List of the services answers at once.
        self.page_size = page_size

    async def read(self, service: str, method: str, request: Mapping[str, Any]) -> Record:
        result: Record = await self._cache.get(
            _key("read", service, method, request),
            read_tags(method, request),
            lambda: self._services.call(service, method, request),
        )
        return result

    async def maybe(self, service: str, method: str, request: Mapping[str, Any]) -> Record | None:
        """The answer, or None when the service has no such thing (remembered like an answer)."""

        async def load() -> Record | None:
            try:
                return await self._services.call(service, method, request)
            except NotFound:
                return None

        result: Record | None = await self._cache.get(
            _key("maybe", service, method, request), read_tags(method, request), load
        )
        return result

    async def read_all(
        self, service: str, method: str, request: Mapping[str, Any], field: str, most_pages: int
    ) -> list[Record]:
        """A listing's `field` items page after page (each page cached like any read), stopping at
        its end or after `most_pages` pages of `page_size` records."""
        items: list[Record] = []
        token = ""
        for _ in range(most_pages):
            paged = {**request, "page_size": self.page_size, **({"page_token": token} if token else {})}
            answer = await self.read(service, method, paged)
            items += answer.get(field, ())
            token = answer.get("next_page_token", "")
            if not token:
                break
        return items

    def stale(self, event_type: str, payload: object) -> int:
        """Forget what an event (or an action's answer) may have changed."""
        return self._cache.invalidate(event_tags(event_type, ids_in(payload)))


def _key(kind: str, service: str, method: str, request: Mapping[str, Any]) -> str:
    return f"{kind}:{service}/{method}?{json.dumps(request, sort_keys=True, default=str)}"
