"""What an SRE sees of a billing run: one trace from the scheduler to gateway-adapter, log lines
carrying its trace id, and the run and backlog gauges."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import UTC, date, datetime

import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanKind
from prometheus_client import REGISTRY

from billing.common.v1 import common_pb2 as common
from billing.recurring.v1 import recurring_pb2 as pb
from billing_devtools.testing.otlp import OtlpReceiver, ReceivedSpan
from billing_devtools.testing.plugin import InfraEnv, eventually
from billing_devtools.testing.tracing import JsonLines, json_lines_of, traced_in_process
from recurring.adapters.metrics import RunMetrics

from .conftest import Deps, custom, dependencies, recurring_service

DAY = date(2031, 5, 5)
WEEKLY = common.BILLING_FREQUENCY_WEEKLY


@pytest.fixture
def json_lines() -> Iterator[JsonLines]:
    with json_lines_of("recurring", logging.DEBUG) as lines:
        yield lines


def at(instant: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(instant)
    return stamp


def hex_trace(span: ReadableSpan) -> str:
    return format(span.context.trace_id, "032x")


def child_of(span: ReadableSpan, parent: ReadableSpan) -> bool:
    return span.parent is not None and span.parent.span_id == parent.context.span_id


@pytest.mark.timeout(240)
async def test_a_scheduled_run_is_one_trace_from_the_run_through_batches_and_charges_to_gateway_adapter(
    env: InfraEnv, otlp: OtlpReceiver, json_lines: JsonLines
) -> None:
    async with dependencies(env, quota_on_test_clock=False, **otlp.env()) as deps:
        # One item per batch: the run's items are split over batches, as two batch loops (or pods)
        # claiming at once split them, and each batch continues the run's trace.
        settings = deps.recurring_settings(test_clock=True, worker_batch_size=1)
        with traced_in_process() as spans:
            async with recurring_service(settings) as recurring:
                stub = recurring.operator
                await stub.SetClock(pb.SetClockRequest(now=at(datetime(2031, 5, 4, 12, tzinfo=UTC))))
                await stub.CreateSubscription(custom("paying", 2500, WEEKLY, DAY))
                await stub.CreateSubscription(custom("declined", 2500, WEEKLY, DAY, token="tok_flaky_2"))
                await stub.SetClock(pb.SetClockRequest(now=at(datetime(2031, 5, 5, 4, tzinfo=UTC))))

                def run_of_day() -> list[ReadableSpan]:
                    return [
                        s
                        for s in spans.get_finished_spans()
                        if s.name == "recurring.run"
                        and (s.attributes or {}).get("run.billing_date") == "2031-05-05"
                        and (s.attributes or {}).get("run.kind") == "daily"  # the 5th also has a monthly run
                    ]

                [run] = await eventually(run_of_day, timeout=60)

                def failure_published() -> list[ReadableSpan]:
                    return [
                        s
                        for s in spans.get_finished_spans()
                        if s.name == "publish invoice.payment_failed"
                        and s.context.trace_id == run.context.trace_id
                    ]

                [published] = await eventually(failure_published, timeout=60)

                def lines_of_run() -> list[dict[str, object]]:
                    return [line for line in json_lines.lines if line.get("trace_id") == hex_trace(run)]

                def worked_and_completed() -> bool:
                    of_run = lines_of_run()
                    worked = sum(
                        int(str(line["items"])) for line in of_run if line["message"] == "batch worked"
                    )
                    return worked == 2 and any(line["message"] == "run completed" for line in of_run)

                # The failure is published while its batch is still settling; the run completes after it.
                await eventually(worked_and_completed, timeout=60)
                of_run = lines_of_run()
        trace = [s for s in spans.get_finished_spans() if s.context.trace_id == run.context.trace_id]

        def served() -> list[ReceivedSpan]:
            spans_served = [s for s in otlp.trace(hex_trace(run)) if s.kind == "server"]
            return (
                spans_served if len([s for s in spans_served if s.name.endswith("/ChargeBatch")]) == 2 else []
            )

        gateway = await eventually(served)

    assert run.parent is None  # the scheduler's run starts its own trace, always kept
    batches = [s for s in trace if s.name == "recurring.batch"]
    assert len(batches) == 2 and all(child_of(batch, run) for batch in batches)
    charges = [s for s in trace if s.name == "recurring.charge"]
    assert len(charges) == 2 and all(any(child_of(c, batch) for batch in batches) for c in charges)
    # Each batch's charges go to gateway-adapter in one call, which it serves in the same trace.
    calls = [s for s in trace if s.kind is SpanKind.CLIENT and s.name.endswith("GatewayService/ChargeBatch")]
    assert sorted(batch.context.span_id for batch in batches) == sorted(
        call.parent.span_id for call in calls if call.parent is not None
    )
    assert sorted(s.parent_id for s in gateway if s.name.endswith("/ChargeBatch")) == sorted(
        format(call.context.span_id, "016x") for call in calls
    )
    [declined] = [c for c in charges if (c.attributes or {}).get("charge.outcome") == "failed"]
    assert child_of(published, declined)  # the failure is announced under the charge that failed

    assert {"run started", "batch worked", "charge answered", "run completed"} <= {
        line["message"] for line in of_run
    }


async def test_the_backlog_and_the_runs_items_are_reported_from_the_database(
    env: InfraEnv, deps: Deps
) -> None:
    # No worker in this pod: the run's items stay pending.
    async with recurring_service(deps.recurring_settings(worker_concurrent_batches=0)) as recurring:
        for n in range(3):
            await recurring.operator.CreateSubscription(custom(f"acct-{n}", 1500, WEEKLY, DAY))
        await recurring.operator.RunBilling(
            pb.RunBillingRequest(
                billing_date=common.Date(year=DAY.year, month=DAY.month, day=DAY.day), kind=pb.RUN_KIND_DAILY
            )
        )
        assert recurring.host.resources is not None
        await RunMetrics(recurring.host.resources.pool).refresh()

    labels = {"kind": "daily", "billing_date": DAY.isoformat()}
    assert REGISTRY.get_sample_value("recurring_work_backlog_items") == 3
    assert REGISTRY.get_sample_value("recurring_run_items", {**labels, "status": "pending"}) == 3
    assert REGISTRY.get_sample_value("recurring_run_due_items", labels) == 3
    assert REGISTRY.get_sample_value("recurring_run_items", {**labels, "status": "charged"}) == 0
    assert REGISTRY.get_sample_value("recurring_run_halted_gateways", labels) == 0


async def test_a_run_the_watcher_completes_says_so_in_the_runs_own_trace(
    deps: Deps, json_lines: JsonLines
) -> None:
    # No worker in this pod: the test settles the run's item the way a worker's pod would before
    # dying ahead of completing the run, and the scheduler's watcher completes it instead.
    with traced_in_process():
        async with recurring_service(deps.recurring_settings(worker_concurrent_batches=0)) as recurring:
            await recurring.operator.CreateSubscription(custom("acct", 1500, WEEKLY, DAY))
            started = await recurring.operator.RunBilling(
                pb.RunBillingRequest(
                    billing_date=common.Date(year=DAY.year, month=DAY.month, day=DAY.day),
                    kind=pb.RUN_KIND_DAILY,
                )
            )
            run_id = started.run.run_id
            await deps.recurring_rows("UPDATE work_items SET status = 'skipped' WHERE run_id = $1", run_id)

            def completion() -> list[dict[str, object]]:
                return [
                    line
                    for line in json_lines.lines
                    if line["message"] == "run completed" and line.get("run_id") == run_id
                ]

            [completed] = await eventually(completion, timeout=30)
    [begun] = [
        line for line in json_lines.lines if line["message"] == "run started" and line.get("run_id") == run_id
    ]
    assert begun.get("trace_id")
    assert completed.get("trace_id") == begun["trace_id"]
