"""What an SRE sees of a case: its attempts in the trace of the failed payment, log lines of its
transitions carrying that trace id, and how old the due backlog is."""

import logging
from collections.abc import Iterator
from datetime import timedelta

import aio_pika
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from prometheus_client import REGISTRY

from billing.dunning.v1 import dunning_pb2 as pb
from billing_common.events import event_type_of
from billing_devtools.testing.tracing import JsonLines, json_lines_of, traced_in_process
from dunning.adapters.metrics import MetricsRefresher

from .conftest import Dunning, fixed_policy, payment_failed

RECURRINGS_SPAN = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


@pytest.fixture
def json_lines() -> Iterator[JsonLines]:
    with json_lines_of("dunning", logging.INFO) as lines:
        yield lines


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    with traced_in_process() as exporter:
        yield exporter


async def publish_in_trace(dunning: Dunning, event: object, traceparent: str) -> None:
    """Publish as recurring's relay does: the failed charge's trace context in the headers."""
    event_type = event_type_of(event)  # type: ignore[arg-type]
    event.header.event_id = "9f1c6a52-2f39-4f57-b3a9-3c1f2f1d5e01"  # type: ignore[attr-defined]
    connection = await aio_pika.connect(dunning.env.infra.amqp_url)
    async with connection:
        channel = await connection.channel()
        exchange = await channel.declare_exchange(
            dunning.env.exchange, aio_pika.ExchangeType.TOPIC, durable=True
        )
        await exchange.publish(
            aio_pika.Message(
                body=event.SerializeToString(),  # type: ignore[attr-defined]
                type=event_type,
                headers={"traceparent": traceparent},
            ),
            routing_key=event_type,
        )


async def test_a_cases_attempt_continues_the_trace_of_the_payment_that_failed(
    dunning: Dunning, spans: InMemorySpanExporter, json_lines: JsonLines
) -> None:
    await dunning.operator.SetPolicy(pb.SetPolicyRequest(policy=fixed_policy("merchant-1", 1, 3, 5)))
    spans.clear()
    await publish_in_trace(dunning, payment_failed("inv-traced"), RECURRINGS_SPAN)
    await dunning.case_in_state("inv-traced", pb.CASE_STATE_RETRY_SCHEDULED)
    dunning.clock.advance(timedelta(days=1, minutes=1))
    assert await dunning.worker().run_once() == 1  # recurring is down: the attempt stays in flight

    trace_id = int(RECURRINGS_SPAN.split("-")[1], 16)
    [consume] = [s for s in spans.get_finished_spans() if s.name == "consume invoice.payment_failed"]
    [attempt] = [s for s in spans.get_finished_spans() if s.name == "dunning.attempt"]
    [call] = [
        s for s in spans.get_finished_spans() if s.kind is SpanKind.CLIENT and "RetryInvoicePayment" in s.name
    ]
    assert consume.context.trace_id == attempt.context.trace_id == call.context.trace_id == trace_id
    assert consume.parent is not None and consume.parent.span_id == int(RECURRINGS_SPAN.split("-")[2], 16)
    assert attempt.parent is not None and attempt.parent.span_id == consume.context.span_id
    assert call.parent is not None and call.parent.span_id == attempt.context.span_id

    traced = [line for line in json_lines.lines if line.get("trace_id") == format(trace_id, "032x")]
    transitions = [
        (line["from_state"], line["to_state"]) for line in traced if line["message"] == "case transition"
    ]
    assert transitions == [("open", "retry_scheduled"), ("retry_scheduled", "attempting")]
    assert [line["result"] for line in traced if line["message"] == "attempt answered"] == ["unavailable"]


async def test_the_due_backlog_and_its_age_are_reported(dunning: Dunning) -> None:
    await dunning.operator.SetPolicy(pb.SetPolicyRequest(policy=fixed_policy("merchant-1", 1, 3, 5)))
    await publish_in_trace(dunning, payment_failed("inv-late"), RECURRINGS_SPAN)
    case = await dunning.case_in_state("inv-late", pb.CASE_STATE_RETRY_SCHEDULED)
    due = case.next_attempt_at.ToDatetime().replace(tzinfo=dunning.clock.now().tzinfo)
    dunning.clock.set(due + timedelta(minutes=40))
    assert dunning.host.resources is not None
    await MetricsRefresher(dunning.host.resources.pool, dunning.clock).refresh()
    assert REGISTRY.get_sample_value("dunning_due_attempts_backlog") == 1
    assert REGISTRY.get_sample_value("dunning_due_attempts_backlog_age_seconds") == 40 * 60
