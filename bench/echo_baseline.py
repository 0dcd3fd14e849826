"""Baseline: a trivial unary RPC served by the same host and interceptors as every service.

Also shows bare grpc.aio (no interceptors, same event loop) so the cost of auth, metrics and
logging is visible.
Later benchmarks report their throughput as a ratio to the `echo` figure at the same concurrency.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from bench.harness import Figures, bench_env, closed_loop, serve_bare, server_process
from billing_common.grpc_client import open_channel
from billing_common.service import run_event_loop
from billing_common.settings import CommonSettings
from billing_devtools.testing import echo

CONCURRENCY = (1, 16, 64)
SECONDS = 4.0


def echo_factory(_settings: CommonSettings) -> Any:
    return echo.echo_lifespan({"bench"})


def _bare_server(ports: Any, stop: Any) -> None:
    async def main() -> None:
        server = grpc.aio.server()
        echo._add(None, server)
        await serve_bare(server, ports, stop)

    run_event_loop(main())  # the host's loop, so that the difference is the host's own work


@contextlib.contextmanager
def bare_process() -> Any:
    ctx = mp.get_context("spawn")
    ports, stop = ctx.Queue(), ctx.Event()
    process = ctx.Process(target=_bare_server, args=(ports, stop), daemon=True)
    process.start()
    try:
        yield ports.get(timeout=60)
    finally:
        stop.set()
        process.join(timeout=10)


@contextlib.asynccontextmanager
async def echo_caller(env: Any) -> AsyncIterator[Callable[[int], Awaitable[Any]]]:
    """A running echo server (its own process) and one call of it, for `closed_loop`."""
    settings = env.settings(CommonSettings, "echo")
    with server_process("bench.echo_baseline:echo_factory", settings, "bench/no-migrations") as served:
        async with open_channel(f"127.0.0.1:{served.port}", env.token("bench")) as channel:
            stub = echo.echo_stub(channel)
            await stub(b"warm-up")
            yield lambda _: stub(b"ping")


async def measure_echo(env: Any, seconds: float = SECONDS) -> dict[int, Figures]:
    results: dict[int, Figures] = {}
    async with echo_caller(env) as call:
        for concurrency in CONCURRENCY:
            results[concurrency] = await closed_loop("echo (service host)", call, concurrency, seconds)
    return results


async def main() -> dict[int, Figures]:
    async with bench_env() as env:
        results = await measure_echo(env)
    for figures in results.values():
        print(figures.line())
    with bare_process() as port:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = echo.echo_stub(channel)
            for concurrency in CONCURRENCY:
                print(
                    (
                        await closed_loop(
                            "echo (bare grpc.aio)", lambda _: stub(b"ping"), concurrency, SECONDS
                        )
                    ).line()
                )
    return results


if __name__ == "__main__":
    run_event_loop(main())
