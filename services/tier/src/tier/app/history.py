"""Questions to the append-only tier history: when and why an account changed tier."""

from __future__ import annotations

import uuid
from datetime import datetime

from billing_common.errors import InvalidArgument
from billing_common.paging import Page, PageRequest
from tier.app.accounts import Accounts
from tier.app.ports import HistoryEntry, TierStore


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
        self, since: datetime | None, scan_id: str, page: PageRequest[int]
    ) -> Page[HistoryEntry, int]:
        if scan_id:
            try:
                uuid.UUID(scan_id)
            except ValueError:
                raise InvalidArgument.of("scan_id", "is not a scan id") from None
        entries = await self._tiers.changes(since, scan_id, page.after, page.limit)
        return page.cut(entries, lambda entry: entry.change_id)
