"""One billing run is one trace: every service exports OTLP to a receiver in this test, as to Jaeger.

The flow: a run whose charge is softly declined -> `invoice.payment_failed` over RabbitMQ -> a
dunning case -> its attempt -> recurring.RetryInvoicePayment -> a charge that succeeds. Before it,
the suite sits idle and must export nothing.
"""

from __future__ import annotations

import asyncio

import pytest

from billing.dunning.v1 import dunning_pb2 as dpb
from billing_devtools.testing.otlp import OtlpReceiver, ReceivedSpan, tree
from billing_devtools.testing.plugin import InfraEnv, eventually
from tests.integration.suite import running_suite
from tests.integration.test_dunning_flows import FAST_DUNNING, case_in_state, failed_invoice, retry_now

SERVICES = ["quota", "gateway-adapter", "recurring", "dunning", "tier"]
IDLE_SECONDS = 5.0


def one(spans: list[ReceivedSpan], service: str, name: str, **attributes: object) -> ReceivedSpan:
    found = [
        s
        for s in spans
        if s.service == service
        and s.name == name
        and all(s.attributes.get(key) == value for key, value in attributes.items())
    ]
    assert len(found) == 1, f"{len(found)} spans {service} {name} {attributes}:\n{tree(spans)}"
    return found[0]


def children(spans: list[ReceivedSpan], parent: ReceivedSpan, service: str, name: str) -> list[ReceivedSpan]:
    return [s for s in spans if s.parent_id == parent.span_id and s.service == service and s.name == name]


async def quiet(otlp: OtlpReceiver, for_seconds: float = 1.0) -> None:
    """Until no span has arrived for a while (start-up work, like each kind's first run, is done)."""
    seen = -1
    while seen != len(otlp.spans):
        seen = len(otlp.spans)
        await asyncio.sleep(for_seconds)


@pytest.mark.timeout(300)
async def test_a_run_with_a_soft_decline_recovered_by_dunning_is_one_trace_and_idle_pods_export_nothing(
    env: InfraEnv, otlp: OtlpReceiver
) -> None:
    tracing = otlp.env()
    extra = {name: dict(tracing) for name in SERVICES}
    extra["dunning"].update(FAST_DUNNING)
    async with running_suite(env, SERVICES, extra) as suite:
        await quiet(otlp)
        before = len(otlp.spans)
        await asyncio.sleep(IDLE_SECONDS)
        assert otlp.spans[before:] == [], tree(otlp.spans[before:])

        invoice = await failed_invoice(suite, "acct-traced", "tok_flaky_1")
        case = await case_in_state(suite, invoice.invoice_id, dpb.CASE_STATE_RETRY_SCHEDULED)
        await retry_now(suite, case.case_id)
        await case_in_state(suite, invoice.invoice_id, dpb.CASE_STATE_RECOVERED)

        def run_billing() -> list[ReceivedSpan]:
            return [
                s for s in otlp.spans if s.name.endswith("RecurringService/RunBilling") and s.kind == "server"
            ]

        [rpc] = await eventually(run_billing, timeout=10)

        def recovered_in_trace() -> list[ReceivedSpan]:
            return [
                s
                for s in otlp.trace(rpc.trace_id)
                if s.service == "dunning" and s.name == "consume invoice.paid"
            ]

        await eventually(recovered_in_trace, timeout=10)
        await quiet(otlp)
    spans = otlp.trace(rpc.trace_id)

    assert {"recurring", "gateway-adapter", "dunning"} <= {s.service for s in spans}
    assert rpc.parent_id == ""  # the operator's call starts the trace
    run = one(spans, "recurring", "recurring.run")
    assert run.parent_id == rpc.span_id
    batch = one(spans, "recurring", "recurring.batch")
    assert batch.parent_id == run.span_id
    declined = one(spans, "recurring", "recurring.charge", **{"charge.outcome": "failed"})
    assert declined.parent_id == batch.span_id
    # The batch's charges go in one call, served in the same trace.
    [call] = children(spans, batch, "recurring", "billing.gateway.v1.GatewayService/ChargeBatch")
    assert call.kind == "client"
    [charged] = children(spans, call, "gateway-adapter", "billing.gateway.v1.GatewayService/ChargeBatch")
    assert charged.kind == "server"

    # The RabbitMQ hop: recurring's relay publishes under the failed charge, dunning consumes under that.
    [published] = children(spans, declined, "recurring", "publish invoice.payment_failed")
    assert published.kind == "producer"
    [consumed] = children(spans, published, "dunning", "consume invoice.payment_failed")
    assert consumed.kind == "consumer"

    # The case's attempt continues the trace that opened the case, and charges through recurring.
    [attempt] = children(spans, consumed, "dunning", "dunning.attempt")
    assert attempt.attributes["case.id"] == case.case_id
    [retry_call] = children(
        spans, attempt, "dunning", "billing.recurring.v1.RecurringService/RetryInvoicePayment"
    )
    [retry] = children(
        spans, retry_call, "recurring", "billing.recurring.v1.RecurringService/RetryInvoicePayment"
    )
    [recharge_call] = children(spans, retry, "recurring", "billing.gateway.v1.GatewayService/Charge")
    [recharged] = children(
        spans, recharge_call, "gateway-adapter", "billing.gateway.v1.GatewayService/Charge"
    )
    assert not recharged.error
    [paid] = children(spans, retry, "recurring", "publish invoice.paid")
    assert children(spans, paid, "dunning", "consume invoice.paid")
