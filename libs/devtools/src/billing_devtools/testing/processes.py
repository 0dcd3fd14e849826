"""Run a service as a real process (`python -m <package>.entrypoints.main`) for cross-service tests.

Services never import each other, not even in tests: a test that needs quota running next to
recurring starts quota this way, with settings from the same `InfraEnv`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import socket
import sys
from collections.abc import AsyncIterator, Mapping
from typing import IO, Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from billing_common.settings import CommonSettings, setting_text


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def settings_env(prefix: str, settings: Any) -> dict[str, str]:
    """The environment variables that `load_settings(type(settings), prefix)` reads back as `settings`."""
    return {
        f"{prefix}_{field.name.upper()}": setting_text(getattr(settings, field.name))
        for field in dataclasses.fields(settings)
    }


@dataclasses.dataclass
class RunningProcess:
    address: str
    process: asyncio.subprocess.Process

    async def kill(self) -> None:
        """SIGKILL: the process dies mid-work, as a crashed pod would."""
        with contextlib.suppress(ProcessLookupError):
            self.process.kill()
        await self.process.wait()

    async def terminate(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.process.terminate()
        try:
            await asyncio.wait_for(self.process.wait(), 30)
        except TimeoutError:
            await self.kill()


async def wait_until_serving(address: str, timeout: float = 60.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    async with grpc.aio.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            try:
                reply = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=2)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.aio.AioRpcError:
                pass
            if loop.time() > deadline:
                raise TimeoutError(f"service at {address} did not become SERVING in {timeout}s")
            await asyncio.sleep(0.1)


async def start_process(
    package: str,
    prefix: str,
    settings: CommonSettings,
    extra_env: Mapping[str, str] | None = None,
    output: IO[bytes] | None = None,
    ready_timeout: float = 180.0,
) -> RunningProcess:
    """Start the service and wait for SERVING; `settings.grpc_port` 0 picks a free port.

    Its stdout and stderr (the JSON log) go to `output` when given, else to the test's own. A
    machine running several suites at once has been seen to take over a minute to start one."""
    if settings.grpc_port == 0:
        settings = dataclasses.replace(settings, grpc_port=free_port())
    env = {**os.environ, **settings_env(prefix, settings), **(extra_env or {})}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", f"{package}.entrypoints.main", env=env, stdout=output, stderr=output
    )
    address = f"127.0.0.1:{settings.grpc_port}"
    try:
        await wait_until_serving(address, ready_timeout)
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        raise
    return RunningProcess(address, process)


@contextlib.asynccontextmanager
async def service_process(
    package: str, prefix: str, settings: CommonSettings, extra_env: Mapping[str, str] | None = None
) -> AsyncIterator[RunningProcess]:
    running = await start_process(package, prefix, settings, extra_env)
    try:
        yield running
    finally:
        await running.terminate()
