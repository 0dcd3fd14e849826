"""Group commit: concurrent callers share writes, each gets its own results, failures reach all."""

from __future__ import annotations

import asyncio

import pytest

from billing_common.grouping import GroupCommit


async def test_callers_arriving_during_a_write_share_the_next_one_and_get_their_own_results() -> None:
    writes: list[list[int]] = []
    first_write_started = asyncio.Event()
    release_first_write = asyncio.Event()

    async def write(items: list[int]) -> list[int]:
        writes.append(items)
        if len(writes) == 1:
            first_write_started.set()
            await release_first_write.wait()
        return [item * 10 for item in items]

    group: GroupCommit[int, int] = GroupCommit(write)
    first = asyncio.ensure_future(group.submit([1]))
    await first_write_started.wait()
    later = [asyncio.ensure_future(group.submit([n, n + 1])) for n in (2, 4, 6)]
    await asyncio.sleep(0)
    release_first_write.set()

    assert await first == [10]
    assert [await call for call in later] == [[20, 30], [40, 50], [60, 70]]
    assert writes == [[1], [2, 3, 4, 5, 6, 7]]


async def test_a_failed_write_fails_every_caller_of_its_group_and_not_the_next() -> None:
    calls = 0

    async def write(items: list[str]) -> list[str]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ConnectionError("database gone")
        return items

    group: GroupCommit[str, str] = GroupCommit(write)
    failed = await asyncio.gather(group.submit(["a"]), group.submit(["b"]), return_exceptions=True)

    assert all(isinstance(result, ConnectionError) for result in failed)
    assert await group.submit(["c"]) == ["c"]


async def test_nothing_to_write_writes_nothing() -> None:
    async def write(items: list[int]) -> list[int]:
        pytest.fail("no write expected")

    assert await GroupCommit(write).submit([]) == []
