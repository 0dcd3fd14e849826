"""What tracing costs a trivial call, on the server and on the client, sampled or not.

The echo service runs in the service host (its own process) in five ways: tracing off; the host's
own tracing (server guard and stamping channel) with the caller's trace not sampled, and sampled;
and, for comparison, the OpenTelemetry gRPC interceptors the host used before, not sampled and
sampled. Spans go by OTLP/gRPC to a receiver in a third process. Short rounds alternate between
the five so the shared machine's load falls on each alike; CPU per call is read from the server
process and from this (calling) process, and is the median of the rounds.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing as mp
import os
import statistics
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased

from bench.harness import bench_env, closed_loop, cpu_seconds
from billing_common import telemetry
from billing_common.grpc_client import _StampingChannel, open_channel
from billing_common.logging import configure_logging
from billing_common.service import ServiceHost, run_event_loop
from billing_common.settings import CommonSettings
from billing_devtools.testing import echo
from billing_devtools.testing.otlp import OtlpReceiver

CONCURRENCY = 16
SECONDS = 1.0
ROUNDS = 8
VARIANTS = ("off", "host unsampled", "host sampled", "interceptors unsampled", "interceptors sampled")
SAMPLED = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
UNSAMPLED = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00"


def _provider(endpoint: str, service: str) -> TracerProvider:
    provider = TracerProvider(
        resource=Resource.create({"service.name": service}),
        sampler=telemetry.BillingSampler(ParentBased(ALWAYS_ON)),
    )
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint, insecure=True)))
    return provider


def _serve(variant: str, endpoint: str, settings: CommonSettings, ports: Any, stop: Any) -> None:
    """An echo pod as deployed (logging to /dev/null), traced as `variant` says."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    configure_logging(settings.service_name, settings.log_level)
    if variant.startswith("host"):
        telemetry.install(_provider(endpoint, "echo"))
    elif variant.startswith("interceptors"):
        from opentelemetry.instrumentation.grpc import aio_server_interceptor

        provider = _provider(endpoint, "echo")
        trace.set_tracer_provider(provider)
        plain = grpc.aio.server

        def with_interceptors(interceptors: Any = (), **kwargs: Any) -> Any:
            traced = [aio_server_interceptor(), *interceptors]  # type: ignore[no-untyped-call]
            return plain(interceptors=traced, **kwargs)

        grpc.aio.server = with_interceptors  # type: ignore[assignment]  # as the host did before

    async def main() -> None:
        host = ServiceHost(settings, echo.echo_lifespan({"bench"}), Path("bench/no-migrations"))
        await host.start()
        ports.put(host.port)
        await asyncio.to_thread(stop.wait)
        await host.stop()
        telemetry.shutdown()

    run_event_loop(main())


def _receive(received: Any, ports: Any, stop: Any) -> None:
    async def main() -> None:
        receiver = OtlpReceiver()
        receiver.listeners.append(lambda spans: setattr(received, "value", received.value + len(spans)))
        await receiver.start()
        ports.put(receiver.port)
        await asyncio.to_thread(stop.wait)
        await receiver.stop()

    run_event_loop(main())


@contextlib.contextmanager
def _process(target: Callable[..., None], *args: Any) -> Iterator[tuple[Any, int]]:
    ctx = mp.get_context("spawn")
    ports, stop = ctx.Queue(), ctx.Event()
    process = ctx.Process(target=target, args=(*args, ports, stop), daemon=True)
    process.start()
    try:
        yield process, ports.get(timeout=120)
    finally:
        stop.set()
        process.join(timeout=30)


@contextlib.contextmanager
def _caller_trace(variant: str, provider: TracerProvider) -> Iterator[None]:
    """The calling side as each variant has it: which tracing, and a sampled or unsampled trace."""
    if variant.startswith("host"):
        telemetry.install(provider)
    try:
        if variant.endswith("unsampled"):
            with (
                telemetry.within({"traceparent": UNSAMPLED})
                if variant.startswith("host")
                else _remote(UNSAMPLED)
            ):
                yield
        elif variant.endswith("sampled"):
            with provider.get_tracer("bench").start_as_current_span("caller"):
                yield
        else:
            yield
    finally:
        if variant.startswith("host"):
            telemetry.uninstall()


@contextlib.contextmanager
def _remote(traceparent: str) -> Iterator[None]:
    span_context = telemetry.parse_traceparent(traceparent)
    assert span_context is not None
    with trace.use_span(trace.NonRecordingSpan(span_context)):
        yield


@contextlib.asynccontextmanager
async def _channel(variant: str, port: int, token: str, provider: TracerProvider) -> AsyncIterator[Any]:
    target = f"127.0.0.1:{port}"
    if variant.startswith("interceptors"):
        from opentelemetry.instrumentation.grpc import aio_client_interceptors

        interceptors = aio_client_interceptors(tracer_provider=provider)  # type: ignore[no-untyped-call]
        plain = grpc.aio.insecure_channel(target, interceptors=interceptors)
        async with _StampingChannel(plain, token) as channel:
            yield channel
    else:
        async with open_channel(target, token) as channel:
            yield channel


def _pinger(stub: Any) -> Callable[[int], Awaitable[Any]]:
    def call(_: int) -> Awaitable[Any]:
        return stub(b"ping")  # type: ignore[no-any-return]

    return call


async def main() -> dict[str, tuple[float, float, float]]:
    """Per variant: calls per second, server and client CPU per call (µs), medians of the rounds."""
    ctx = mp.get_context("spawn")
    received = ctx.Value("i", 0)
    rounds: dict[str, list[tuple[float, float, float]]] = {variant: [] for variant in VARIANTS}
    async with bench_env() as env:
        with contextlib.ExitStack() as stack:
            _, receiver_port = stack.enter_context(_process(_receive, received))
            endpoint = f"http://127.0.0.1:{receiver_port}"
            provider = _provider(endpoint, "bench")
            servers = {
                variant: stack.enter_context(
                    _process(
                        _serve, variant, endpoint, env.settings(CommonSettings, "echo", log_level="INFO")
                    )
                )
                for variant in VARIANTS
            }
            async with contextlib.AsyncExitStack() as channels:
                stubs = {
                    variant: echo.echo_stub(
                        await channels.enter_async_context(
                            _channel(variant, port, env.token("bench"), provider)
                        )
                    )
                    for variant, (_, port) in servers.items()
                }
                for _ in range(ROUNDS):
                    for variant, stub in stubs.items():
                        pid = servers[variant][0].pid
                        call = _pinger(stub)
                        with _caller_trace(variant, provider):
                            server_before, client_before = cpu_seconds(pid), time.process_time()
                            figures = await closed_loop(variant, call, CONCURRENCY, SECONDS)
                            client = time.process_time() - client_before
                            server = cpu_seconds(pid) - server_before
                        rounds[variant].append(
                            (figures.rps, server / figures.calls * 1e6, client / figures.calls * 1e6)
                        )
            provider.shutdown()
    results = {
        variant: tuple(statistics.median(r[i] for r in measured) for i in range(3))
        for variant, measured in rounds.items()
    }
    off = results["off"]
    for variant, (rps, server, client) in results.items():
        print(
            f"{variant:<24} c={CONCURRENCY}  {rps:6.0f} req/s  server CPU {server:4.0f} us/call "
            f"({server - off[1]:+4.0f})  client CPU {client:4.0f} us/call ({client - off[2]:+4.0f})"
        )
    print(f"spans received: {received.value}")
    return results  # type: ignore[return-value]


if __name__ == "__main__":
    run_event_loop(main())
