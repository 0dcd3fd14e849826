"""A payment's later news in its charge's trace: the janitor's look-up continues it, and a gateway's
notice about it starts a trace linked to it."""

from collections.abc import Iterator
from datetime import timedelta

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from billing.common.v1 import common_pb2 as c
from billing_devtools.testing.plugin import EventCollector, InfraEnv, eventually
from billing_devtools.testing.tracing import traced_in_process

from .conftest import gateway_service


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    with traced_in_process() as exporter:
        yield exporter


def charge_span(spans: InMemorySpanExporter) -> ReadableSpan:
    [served] = [
        s for s in spans.get_finished_spans() if s.kind is SpanKind.SERVER and s.name.endswith("/Charge")
    ]
    return served


async def test_the_janitors_look_up_of_an_unknown_outcome_continues_the_charges_trace(
    env: InfraEnv, spans: InMemorySpanExporter
) -> None:
    schedule = (timedelta(milliseconds=300), timedelta(hours=1))
    async with (
        gateway_service(env, unknown_check_schedule=schedule) as gateway,
        EventCollector(env.infra.amqp_url, env.exchange, ["payment.reconciled"]) as events,
    ):
        assert (
            await gateway.charge("lost-answer", "tok_timeout_charged")
        ).payment.status == c.PAYMENT_STATUS_UNKNOWN
        await events.wait_for("payment.reconciled")

        def published() -> list[ReadableSpan]:
            return [s for s in spans.get_finished_spans() if s.name == "publish payment.reconciled"]

        [publish] = await eventually(published)
    served = charge_span(spans)
    [reconcile] = [s for s in spans.get_finished_spans() if s.name == "gateway.reconcile"]
    assert reconcile.parent is not None and reconcile.parent.span_id == served.context.span_id
    assert publish.parent is not None and publish.parent.span_id == reconcile.context.span_id


async def test_a_gateways_notice_about_a_payment_is_linked_to_its_charge(
    env: InfraEnv, spans: InMemorySpanExporter
) -> None:
    async with (
        gateway_service(env, sandbox_ach_clears_after=timedelta(milliseconds=300)) as gateway,
        EventCollector(env.infra.amqp_url, env.exchange, ["payment.settled"]) as events,
    ):
        await gateway.charge("ach-1", "ach_settles", method=c.PAYMENT_METHOD_TYPE_ACH)
        await events.wait_for("payment.settled")

        def noticed() -> list[ReadableSpan]:
            return [s for s in spans.get_finished_spans() if s.name == "webhook sandbox"]

        [notice] = await eventually(noticed)
    served = charge_span(spans)
    assert notice.context.trace_id != served.context.trace_id
    assert [link.context.span_id for link in notice.links] == [served.context.span_id]
