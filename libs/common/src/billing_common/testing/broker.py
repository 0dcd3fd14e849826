"""Stop and start the real RabbitMQ node, for tests of what happens while it is down."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator


async def _rabbitmqctl(*args: str) -> None:
    process = await asyncio.create_subprocess_exec(
        "rabbitmqctl", *args, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
    )
    _, err = await process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"rabbitmqctl {' '.join(args)} failed: {err.decode()}")


@contextlib.asynccontextmanager
async def broker_stopped() -> AsyncIterator[None]:
    """The broker application is stopped inside the block and started again after it."""
    await _rabbitmqctl("stop_app")
    try:
        yield
    finally:
        await _rabbitmqctl("start_app")
        await _rabbitmqctl("await_startup")
