"""Benchmark plumbing: servers in their own processes, a closed-loop load generator, figures.

The server under test runs in a child process so that the load generator does not share its
event loop; both share this machine's two cores, so compare figures as ratios within one run.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import importlib
import multiprocessing as mp
import os
import statistics
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import asyncpg
from prometheus_client.parser import text_string_to_metric_families

from billing_common import db
from billing_common.logging import configure_logging
from billing_common.service import ServiceHost, run_event_loop
from billing_common.settings import CommonSettings
from billing_devtools.testing.infra import TEST_DATABASE, resolve_infra
from billing_devtools.testing.plugin import InfraEnv, _ensure_database, _with_database


@dataclass(frozen=True)
class Figures:
    name: str
    concurrency: int
    calls: int
    seconds: float
    p50_ms: float
    p99_ms: float
    latencies: tuple[float, ...] = field(default=(), repr=False, compare=False)  # sorted, seconds

    @property
    def rps(self) -> float:
        return self.calls / self.seconds

    def line(self, baseline: Figures | None = None) -> str:
        ratio = f"  ratio to echo {self.rps / baseline.rps:5.2f}" if baseline else ""
        return (
            f"{self.name:<34} c={self.concurrency:<3} {self.rps:9.0f} req/s  "
            f"p50 {self.p50_ms:6.2f} ms  p99 {self.p99_ms:6.2f} ms{ratio}"
        )


async def closed_loop(
    name: str, call: Callable[[int], Awaitable[Any]], concurrency: int, seconds: float
) -> Figures:
    """`concurrency` callers each issue calls back to back for `seconds`; latencies of all calls."""
    # The load generator's own collections would show up as the servers' tail latency.
    gc.collect()
    gc.freeze()
    latencies: list[float] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    counter = iter(range(10**12))

    async def caller() -> None:
        while loop.time() < deadline:
            started = time.perf_counter()
            await call(next(counter))
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(concurrency)))
    return _figures(name, concurrency, latencies, time.perf_counter() - started)


async def open_loop(name: str, call: Callable[[int], Awaitable[Any]], rate: float, seconds: float) -> Figures:
    """Calls started at a fixed `rate`, whatever the answers do; each latency is counted from the
    moment its call was due, so a stall counts against every call it delays.

    `concurrency` in the figures is the most calls that were in flight at once.
    """
    gc.collect()
    gc.freeze()
    latencies: list[float] = []
    in_flight = busiest = 0

    async def one(number: int, due: float) -> None:
        nonlocal in_flight
        try:
            await call(number)
        finally:
            in_flight -= 1
        latencies.append(time.perf_counter() - due)

    started = time.perf_counter()  # not loop.time(): uvloop's clock moves in whole milliseconds
    tasks = []
    for number in range(int(rate * seconds)):
        due = started + number / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        in_flight += 1
        busiest = max(busiest, in_flight)
        tasks.append(asyncio.ensure_future(one(number, due)))
    await asyncio.gather(*tasks)
    return _figures(name, busiest, latencies, time.perf_counter() - started)


def pooled(name: str, rounds: list[Figures]) -> Figures:
    """Several rounds as one: all their calls over all their time, percentiles of every call."""
    latencies = [latency for figures in rounds for latency in figures.latencies]
    seconds = sum(figures.seconds for figures in rounds)
    return _figures(name, max(figures.concurrency for figures in rounds), latencies, seconds)


def _figures(name: str, concurrency: int, latencies: list[float], seconds: float) -> Figures:
    latencies.sort()
    return Figures(
        name,
        concurrency,
        len(latencies),
        seconds,
        statistics.median(latencies) * 1000,
        latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000,
        tuple(latencies),
    )


def _serve(setup_ref: str, settings: CommonSettings, migrations: str, ports: Any, stop: Any) -> None:
    """A pod as deployed, logging included; its JSON lines go to /dev/null, not the figures."""
    from pathlib import Path

    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    configure_logging(settings.service_name, settings.log_level)
    module, _, attr = setup_ref.partition(":")
    setup = getattr(importlib.import_module(module), attr)(settings)

    async def main() -> None:
        host = ServiceHost(settings, setup, Path(migrations))
        await host.start()
        if host.consumer is not None:  # a fresh exchange drops what is published before the bind
            await asyncio.wait_for(host.consumer.ready.wait(), 60)
        ports.put(host.port)
        await asyncio.to_thread(stop.wait)
        await host.stop()

    run_event_loop(main())


async def serve_bare(server: Any, ports: Any, stop: Any) -> None:
    """A bare grpc.aio server's process: serve on a free loopback port, report it, stop when told."""
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    ports.put(port)
    await asyncio.to_thread(stop.wait)
    await server.stop(None)


@contextlib.asynccontextmanager
async def bench_env(database: str = TEST_DATABASE) -> AsyncIterator[InfraEnv]:
    """Isolated schemas, queues and keys; a database of its own (`database`) keeps another's
    commits out of a bench that counts them."""
    with resolve_infra() as found:
        await _ensure_database(found.postgres_admin_url, database)
        infra = type(found)(
            _with_database(found.postgres_admin_url, database), found.redis_url, found.amqp_url
        )
        env = InfraEnv(infra)
        try:
            yield env
        finally:
            await env.cleanup()


@dataclass(frozen=True)
class Served:
    port: int
    pid: int


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) a process has used so far."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def server_process(setup_ref: str, settings: CommonSettings, migrations: str) -> Iterator[Served]:
    """Run `setup_ref` ("package.module:factory", factory(settings) -> setup) in a child process."""
    ctx = mp.get_context("spawn")
    ports = ctx.Queue()
    stop = ctx.Event()
    process = ctx.Process(target=_serve, args=(setup_ref, settings, migrations, ports, stop), daemon=True)
    process.start()
    try:
        port = ports.get(timeout=120)
        assert process.pid is not None  # started
        yield Served(port, process.pid)
    finally:
        stop.set()
        process.join(timeout=30)
        if process.is_alive():
            process.kill()


async def busiest_second(env: InfraEnv, key_prefix: str = "") -> int:
    """The most charges (with keys starting `key_prefix`) that reached the sandbox gateway within
    any one second, at any alignment, on its clock."""
    conn = await asyncpg.connect(env.infra.postgres_admin_url)
    try:
        schema = db.quote_ident(f"gateway_adapter_{env.run_id}")
        busiest = await conn.fetchval(
            f"""SELECT coalesce(max(n), 0) FROM (
                    SELECT count(*) OVER (
                        ORDER BY created_at
                        RANGE BETWEEN CURRENT ROW AND INTERVAL '999999 microseconds' FOLLOWING
                    ) AS n
                    FROM {schema}.sandbox_charges WHERE starts_with(idempotency_key, $1)
                ) windows""",
            key_prefix,
        )
        return int(busiest)
    finally:
        await conn.close()


async def outbox_drained(env: InfraEnv, schema: str, timeout_s: float = 120.0) -> None:
    """Wait until the relay of the service owning `schema` has published every event written so far,
    so that a measurement does not start while the last one's events still take the machine."""
    conn = await asyncpg.connect(env.infra.postgres_admin_url)
    try:
        deadline = time.monotonic() + timeout_s
        unpublished = f"SELECT count(*) FROM {db.quote_ident(schema)}.outbox WHERE published_at IS NULL"
        while await conn.fetchval(unpublished):
            if time.monotonic() > deadline:
                raise TimeoutError(f"the outbox of {schema} was not drained in {timeout_s:.0f} s")
            await asyncio.sleep(0.2)
    finally:
        await conn.close()


@dataclass(frozen=True)
class Stalls:
    """Pauses between consecutive charges at the gateway longer than some length."""

    count: int
    seconds: float  # all of them together


async def gateway_stalls(env: InfraEnv, longer_than_s: float) -> Stalls:
    """The pauses between consecutive charges at the sandbox gateway (its clock) longer than
    `longer_than_s`: where a paced run's turns went unused."""
    conn = await asyncpg.connect(env.infra.postgres_admin_url)
    try:
        schema = db.quote_ident(f"gateway_adapter_{env.run_id}")
        row = await conn.fetchrow(
            f"""SELECT count(*), coalesce(sum(gap), 0) FROM (
                    SELECT extract(epoch FROM created_at - lag(created_at) OVER (ORDER BY created_at)) AS gap
                    FROM {schema}.sandbox_charges
                ) gaps WHERE gap > $1""",
            longer_than_s,
        )
        assert row is not None  # an aggregate always has its row
        return Stalls(int(row[0]), float(row[1]))
    finally:
        await conn.close()


async def scraped(port: int, metric: str, **labels: str) -> float:
    """A sample's value (0 when absent) from a process's Prometheus endpoint on `port`."""
    url = f"http://127.0.0.1:{port}/metrics"
    text = await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=10).read().decode())
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == metric and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0


async def gateway_window(env: InfraEnv) -> float:
    """Seconds from the first charge that reached the sandbox gateway to the last, on its clock."""
    conn = await asyncpg.connect(env.infra.postgres_admin_url)
    try:
        schema = db.quote_ident(f"gateway_adapter_{env.run_id}")
        window = await conn.fetchval(
            f"SELECT extract(epoch FROM max(created_at) - min(created_at)) FROM {schema}.sandbox_charges"
        )
        return float(window or 0)
    finally:
        await conn.close()
