"""Group commit: concurrent callers' writes go to the database together, one transaction per group
(and likewise concurrent reads go in one call, such as quota's MGET of counters).

While one group is being written, the next callers queue up; when it is done, everything queued
is written as the next group. Under load a transaction carries many callers' rows (fewer commits,
less CPU per row); alone, a caller waits for nobody.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")


class GroupCommit(Generic[Item, Result]):
    """`write` takes the items of every queued caller and returns one result per item, in order."""

    def __init__(self, write: Callable[[list[Item]], Awaitable[Sequence[Result]]]) -> None:
        self._write = write
        self._queued: list[tuple[Sequence[Item], asyncio.Future[list[Result]]]] = []
        self._writer: asyncio.Task[None] | None = None

    async def submit(self, items: Sequence[Item]) -> list[Result]:
        """The results of `items`; if the group's write fails, its error."""
        if not items:
            return []
        future: asyncio.Future[list[Result]] = asyncio.get_running_loop().create_future()
        self._queued.append((items, future))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write_queued())
        return await future

    async def _write_queued(self) -> None:
        while self._queued:
            group, self._queued = self._queued, []
            try:
                results = await self._write([item for items, _ in group for item in items])
            except Exception as error:  # every caller of the group learns its rows are not written
                for _, future in group:
                    if not future.done():
                        future.set_exception(error)
                continue
            offset = 0
            for items, future in group:
                if not future.done():
                    future.set_result(list(results[offset : offset + len(items)]))
                offset += len(items)
