"""Questions to the append-only tier history: when and why an account changed tier."""

from __future__ import annotations

import uuid
from datetime import datetime

from billing_common.errors import InvalidArgument
from tier.app.accounts import Accounts
from tier.app.ports import HistoryEntry, TierStore

DEFAULT_PAGE = 100
MAX_PAGE = 1000


def page_size(requested: int) -> int:
    if requested < 0:
        raise InvalidArgument.of("page_size", "must not be negative")
    return min(requested or DEFAULT_PAGE, MAX_PAGE)


def page_after(token: str) -> int:
    """Page tokens are the last id of the previous page (opaque to callers)."""
    if not token:
        return 0
    if not token.isdigit():
        raise InvalidArgument.of("page_token", "is not a token this service gave out")
    return int(token)


class History:
    def __init__(self, accounts: Accounts, tiers: TierStore) -> None:
        self._accounts = accounts
        self._tiers = tiers

    async def of(self, account_id: str) -> list[HistoryEntry]:
        await self._accounts.require(account_id)
        return await self._tiers.history(account_id)

    async def at(self, account_id: str, at: datetime | None) -> HistoryEntry | None:
        if at is None:
            raise InvalidArgument.of("at", "is required")
        await self._accounts.require(account_id)
        return await self._tiers.tier_at(account_id, at)

    async def changes(
        self, since: datetime | None, scan_id: str, requested_size: int, token: str
    ) -> tuple[list[HistoryEntry], str]:
        if scan_id:
            try:
                uuid.UUID(scan_id)
            except ValueError:
                raise InvalidArgument.of("scan_id", "is not a scan id") from None
        size = page_size(requested_size)
        entries = await self._tiers.changes(since, scan_id, page_after(token), size + 1)
        more = len(entries) > size
        entries = entries[:size]
        return entries, str(entries[-1].change_id) if more else ""
