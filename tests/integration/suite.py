"""Start the services of a flow as real processes, wired to each other, and give typed stubs."""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import grpc

from billing_common.grpc_client import open_channel
from billing_common.settings import CommonSettings
from billing_devtools import services
from billing_devtools.devrun import TEST_CLOCK_SETTINGS
from billing_devtools.testing.plugin import InfraEnv
from billing_devtools.testing.processes import RunningProcess, free_port, start_process


def _stub_class(path: str) -> Any:
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


# package, env prefix, stub class of each service of services.toml
SERVICES: dict[str, tuple[str, str, Any]] = {
    name: (package, prefix, _stub_class(services.STUBS[name]))
    for name, prefix, package, *_ in services.SERVICES
}
# Who each service calls, as the settings field naming the address (`<CALLER>_<CALLEE>_ADDR`).
CALLS = {"recurring": ["quota", "gateway-adapter"], "dunning": ["recurring"]}


def on_test_clock(name: str) -> dict[str, str]:
    """The service's settings on the suite's test clock, with `make run`'s short polls."""
    prefix = SERVICES[name][1]
    env = {f"{prefix}_TEST_CLOCK": "true"}
    env.update({key: value for key, value in TEST_CLOCK_SETTINGS.items() if key.startswith(f"{prefix}_")})
    if name == "gateway-adapter":
        env["GATEWAY_WEBHOOK_PORT"] = str(free_port())
    return env


@dataclass
class Suite:
    env: InfraEnv
    processes: dict[str, RunningProcess] = field(default_factory=dict)
    channels: list[grpc.aio.Channel] = field(default_factory=list)

    def stub(self, service: str, caller: str = "operator") -> Any:
        channel = open_channel(self.processes[service].address, self.env.token(caller))
        self.channels.append(channel)
        return SERVICES[service][2](channel)

    @property
    def gateway_schema(self) -> str:
        return f"gateway_adapter_{self.env.run_id}"


@contextlib.asynccontextmanager
async def running_suite(
    env: InfraEnv,
    names: list[str],
    extra: dict[str, dict[str, str]] | None = None,
    ready_timeout: float = 60.0,
) -> AsyncIterator[Suite]:
    """Start `names` in dependency order (callees first), each with its callers' addresses set."""
    suite = Suite(env)
    try:
        for name in names:
            package, prefix, _ = SERVICES[name]
            wiring = {
                f"{prefix}_{callee.upper().replace('-', '_')}_ADDR": suite.processes[callee].address
                for callee in CALLS.get(name, [])
                if callee in suite.processes
            }
            settings = env.settings(CommonSettings, name)
            suite.processes[name] = await start_process(
                package,
                prefix,
                settings,
                {**wiring, **(extra or {}).get(name, {})},
                ready_timeout=ready_timeout,
            )
        yield suite
    finally:
        for channel in suite.channels:
            await channel.close()
        for running in reversed(list(suite.processes.values())):
            await running.terminate()
