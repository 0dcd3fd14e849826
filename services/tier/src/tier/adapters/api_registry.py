"""Active API clients from the API-client registry, over its HTTP JSON interface.

    GET {base}/v1/api-clients?status=active&limit=500[&cursor=...]   (Authorization: Bearer <token>)
    200 {"data": [{"id": "cli_1", "account_id": "db-42", "status": "active"}, ...],
         "next_cursor": "..." or null}

`account_id` is an end user (organization) or a database id; the signal is the count per account.
"""

from __future__ import annotations

from collections import Counter
from datetime import datetime, timedelta
from typing import Any

import aiohttp

from tier.app.ports import ProviderError
from tier.domain.accounts import Signal, SignalKind

PAGE_SIZE = 500


class ApiClientRegistryProvider:
    name = "api-registry"
    kind = SignalKind.API_CLIENTS_ACTIVE

    def __init__(self, base_url: str, token: str, timeout: timedelta) -> None:
        self._url = base_url.rstrip("/") + "/v1/api-clients"
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._timeout = aiohttp.ClientTimeout(total=timeout.total_seconds())

    async def fetch(self, observed_at: datetime) -> list[Signal]:
        active: Counter[str] = Counter()
        cursor: str | None = None
        try:
            async with aiohttp.ClientSession(timeout=self._timeout, headers=self._headers) as session:
                while True:
                    params = {
                        "status": "active",
                        "limit": str(PAGE_SIZE),
                        **({"cursor": cursor} if cursor else {}),
                    }
                    async with session.get(self._url, params=params) as response:
                        if response.status != 200:
                            raise ProviderError(f"the registry answered HTTP {response.status}")
                        page: Any = await response.json()
                    for client in page["data"]:
                        if client.get("status", "active") == "active":
                            active[str(client["account_id"])] += 1
                    cursor = page.get("next_cursor")
                    if not cursor:
                        break
        except (aiohttp.ClientError, TimeoutError, KeyError, TypeError, ValueError) as error:
            raise ProviderError(f"the registry could not be read: {error!r}") from error
        return [
            Signal(account, self.kind, str(count), self.name, observed_at)
            for account, count in active.items()
        ]
