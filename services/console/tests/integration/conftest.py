"""The five services as real processes, seeded through their APIs, and the console as a real
process in front of them (HTTP on a free loopback port, its metrics on another)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from billing_devtools.testing.infra import Infra
from billing_devtools.testing.plugin import InfraEnv
from billing_devtools.testing.processes import free_port
from console.domain.people import hash_password
from tests.integration.suite import Suite, running_suite

from .seed import Seeded, seed

PASSWORDS = {"alice": "alice-operates-billing", "bob": "bob-reads-the-money"}
FAST_DUNNING = {
    "DUNNING_WORKER_POLL_INTERVAL": "0.1s",
    "DUNNING_ATTEMPT_LEASE": "3s",
    "DUNNING_CASE_LOCK_TTL": "2s",
}
CONSUMERS = ("quota", "recurring", "dunning")


@dataclass
class RunningConsole:
    suite: Suite
    seeded: Seeded
    url: str
    metrics_url: str

    async def service_reads(self) -> float:
        """gRPC calls the console has made so far (its own client metric, every method summed)."""
        async with httpx.AsyncClient() as client:
            text = (await client.get(self.metrics_url)).text
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("grpc_client_handled_total{")
        )


def users_file(folder: Path) -> Path:
    path = folder / "users"
    roles = {"alice": "operator", "bob": "finance"}
    lines = [f"{name} {roles[name]} {hash_password(password)}\n" for name, password in PASSWORDS.items()]
    path.write_text("".join(lines), encoding="utf-8")
    return path


async def wait_until_ready(url: str, timeout: float = 60.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    async with httpx.AsyncClient() as client:
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if (await client.get(f"{url}/readyz")).status_code == 200:
                    return
            if loop.time() > deadline:
                raise TimeoutError(f"the console at {url} was not ready in {timeout}s")
            await asyncio.sleep(0.2)


@contextlib.asynccontextmanager
async def console_process(env: InfraEnv, suite: Suite, users: Path) -> AsyncIterator[tuple[str, str]]:
    http_port, metrics_port = free_port(), free_port()
    addresses = {
        f"CONSOLE_{name.upper().replace('-', '_')}_ADDR": running.address
        for name, running in suite.processes.items()
    }
    prefix = env.run_id
    settings = {
        "CONSOLE_HTTP_HOST": "127.0.0.1",
        "CONSOLE_HTTP_PORT": str(http_port),
        "CONSOLE_METRICS_PORT": str(metrics_port),
        "CONSOLE_AUTH_TOKEN": env.token("console"),
        "CONSOLE_REDIS_URL": env.infra.redis_url,
        "CONSOLE_REDIS_NAMESPACE": f"{prefix}:console",
        "CONSOLE_AMQP_URL": env.infra.amqp_url,
        "CONSOLE_AMQP_EXCHANGE": env.exchange,
        "CONSOLE_USERS_FILE": str(users),
        "CONSOLE_COOKIE_SECURE": "false",
        "CONSOLE_DEAD_LETTER_QUEUES": ",".join(f"{name}.{prefix}.events.dlq" for name in CONSUMERS),
        "CONSOLE_GATEWAYS": "sandbox-card",
        "CONSOLE_LOG_LEVEL": "WARNING",
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "console.entrypoints.main", env={**os.environ, **addresses, **settings}
    )
    url = f"http://127.0.0.1:{http_port}"
    try:
        await wait_until_ready(url)
        yield url, f"http://127.0.0.1:{metrics_port}/metrics"
    finally:
        with contextlib.suppress(ProcessLookupError):
            process.terminate()
        try:
            await asyncio.wait_for(process.wait(), 20)
        except TimeoutError:
            process.kill()


@pytest.fixture(scope="package")
async def running_console(
    infra: Infra, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[RunningConsole]:
    env = InfraEnv(infra)
    extra = {"dunning": FAST_DUNNING}
    services = ["quota", "gateway-adapter", "recurring", "dunning", "tier"]
    try:
        # Five services start one after the other; on a loaded machine one may take over a minute.
        async with running_suite(env, services, extra, ready_timeout=180) as suite:
            seeded = await seed(suite)
            async with console_process(env, suite, users_file(tmp_path_factory.mktemp("console"))) as (
                url,
                metrics,
            ):
                yield RunningConsole(suite, seeded, url, metrics)
    finally:
        await env.cleanup()
