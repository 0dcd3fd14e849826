"""Traces through the service host: calls, the outbox relay and consumers, and idle time."""

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from billing.events.v1 import payment_pb2
from billing_common import telemetry
from billing_common.events import Handlers
from billing_common.grpc_client import open_channel
from billing_common.service import Background, Resources, ServiceParts
from billing_common.settings import CommonSettings
from billing_devtools.testing.echo import echo_registration, echo_stub
from billing_devtools.testing.plugin import InfraEnv, eventually, running_service
from billing_devtools.testing.tracing import traced_in_process

NO_MIGRATIONS = Path(__file__).parent / "no-migrations"
UNSAMPLED_TRACE = "5b8efff798038103d269b633813fc60c"


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    with traced_in_process() as exporter:
        yield exporter


def named(spans: InMemorySpanExporter, name: str) -> list[ReadableSpan]:
    return [span for span in spans.get_finished_spans() if span.name == name]


def parent_of(span: ReadableSpan) -> int:
    assert span.parent is not None, f"{span.name} has no parent"
    return span.parent.span_id


@contextlib.asynccontextmanager
async def echo_host(env: InfraEnv, **parts: Any) -> AsyncIterator[Any]:
    @contextlib.asynccontextmanager
    async def lifespan(_resources: Resources) -> AsyncIterator[ServiceParts]:
        yield ServiceParts([echo_registration({"recurring"})], **parts)

    settings = env.settings(CommonSettings, "echo", outbox_poll_interval=timedelta(milliseconds=50))
    async with running_service(settings, lifespan, NO_MIGRATIONS) as host:
        yield host


async def test_a_call_continues_the_callers_trace_through_client_and_server_spans(
    env: InfraEnv, spans: InMemorySpanExporter
) -> None:
    async with (
        echo_host(env) as host,
        open_channel(f"127.0.0.1:{host.port}", env.token("recurring")) as channel,
    ):
        with telemetry.span("billing run") as run:
            assert await echo_stub(channel)(b"ping") == b"ping"
    [client] = [
        s for s in spans.get_finished_spans() if s.kind is SpanKind.CLIENT and s.name.endswith("/Echo")
    ]
    [server] = [s for s in spans.get_finished_spans() if s.kind is SpanKind.SERVER]
    assert server.name == client.name == "billing.testing.Echo/Echo"
    assert {client.context.trace_id, server.context.trace_id} == {run.get_span_context().trace_id}
    assert parent_of(client) == run.get_span_context().span_id
    assert parent_of(server) == client.context.span_id
    assert server.attributes is not None and server.attributes["billing.caller"] == "recurring"


async def test_an_unsampled_trace_makes_no_spans_but_a_server_fault_in_it_is_kept(
    env: InfraEnv, spans: InMemorySpanExporter
) -> None:
    unsampled = {"traceparent": f"00-{UNSAMPLED_TRACE}-b7ad6b7169203331-00"}
    async with (
        echo_host(env) as host,
        open_channel(f"127.0.0.1:{host.port}", env.token("recurring")) as channel,
    ):
        with telemetry.within(unsampled):
            assert await echo_stub(channel)(b"ping") == b"ping"
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await echo_stub(channel)(b"invalid")
            assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
            with pytest.raises(grpc.aio.AioRpcError) as crashed:
                await echo_stub(channel)(b"crash")
            assert crashed.value.code() is grpc.StatusCode.INTERNAL
    [kept] = [s for s in spans.get_finished_spans() if format(s.context.trace_id, "032x") == UNSAMPLED_TRACE]
    assert kept.kind is SpanKind.SERVER and not kept.status.is_ok
    assert kept.attributes is not None and kept.attributes[telemetry.KEPT_FOR_ERROR] is True


async def test_the_relay_publishes_each_row_under_the_context_it_was_written_in_and_the_consumer_continues_it(
    env: InfraEnv, spans: InMemorySpanExporter
) -> None:
    handled = asyncio.Event()

    async def on_payment(conn: asyncpg.Connection, event: payment_pb2.PaymentSucceeded) -> None:
        await conn.fetchval("SELECT 1")
        handled.set()

    async with echo_host(env, event_handlers=Handlers().on(payment_pb2.PaymentSucceeded, on_payment)) as host:
        assert host.resources is not None and host.consumer is not None
        await asyncio.wait_for(host.consumer.ready.wait(), 10)  # a message before the bind is dropped
        outbox = host.resources.outbox
        with telemetry.span("Charge") as request:
            async with host.resources.pool.acquire() as conn, conn.transaction():
                await outbox.add(
                    conn, payment_pb2.PaymentSucceeded(payment=payment_pb2.PaymentFacts(payment_id="p1"))
                )
        await asyncio.wait_for(handled.wait(), 10)
        await eventually(lambda: named(spans, "consume payment.succeeded"))
    [publish] = named(spans, "publish payment.succeeded")
    [consume] = named(spans, "consume payment.succeeded")
    assert publish.kind is SpanKind.PRODUCER and consume.kind is SpanKind.CONSUMER
    assert publish.context.trace_id == consume.context.trace_id == request.get_span_context().trace_id
    assert parent_of(publish) == request.get_span_context().span_id
    assert parent_of(consume) == publish.context.span_id
    [query] = [
        s for s in spans.get_finished_spans() if (s.attributes or {}).get("db.statement") == "SELECT 1"
    ]
    assert query.context.trace_id == consume.context.trace_id


async def test_an_idle_host_with_relay_consumer_workers_and_health_probes_makes_no_spans(
    env: InfraEnv, spans: InMemorySpanExporter
) -> None:
    async def on_payment(conn: asyncpg.Connection, event: payment_pb2.PaymentSucceeded) -> None:
        raise AssertionError("no event is published")

    resources: list[Resources] = []
    started = asyncio.Event()

    async def polling_worker() -> None:
        """What the run and attempt workers do when nothing is due."""
        await started.wait()
        while True:
            async with resources[0].pool.acquire() as conn, conn.transaction():
                await conn.fetch("SELECT 1 FOR UPDATE SKIP LOCKED")
            await resources[0].redis.get("nothing-due")
            await asyncio.sleep(0.05)

    async with echo_host(
        env,
        event_handlers=Handlers().on(payment_pb2.PaymentSucceeded, on_payment),
        background=[Background(polling_worker)],
    ) as host:
        assert host.resources is not None
        resources.append(host.resources)
        started.set()
        async with grpc.aio.insecure_channel(f"127.0.0.1:{host.port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            for _ in range(10):
                await health.Check(health_pb2.HealthCheckRequest(service=""))
                await asyncio.sleep(0.1)
        await asyncio.sleep(1.0)
    assert [s.name for s in spans.get_finished_spans()] == []
