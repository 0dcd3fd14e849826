"""The sampler and the stored-context helpers, with spans kept in memory."""

import time
from collections.abc import Iterator
from datetime import timedelta

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import Decision
from opentelemetry.trace import SpanKind

from billing_common import telemetry
from billing_devtools.testing.tracing import traced_in_process

SAMPLED = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
UNSAMPLED = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00"


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    with traced_in_process() as exporter:
        yield exporter


def decision(sampler: telemetry.BillingSampler, **kwargs: object) -> Decision:
    return sampler.should_sample(None, 0x0AF7651916CD43DD8448EB211C80319C, "x", **kwargs).decision  # type: ignore[arg-type]


def test_a_library_call_outside_any_request_or_job_never_starts_a_trace(monkeypatch) -> None:
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "always_on")
    sampler = telemetry.sampler()
    assert decision(sampler, kind=SpanKind.CLIENT) is Decision.DROP
    assert decision(sampler, kind=SpanKind.SERVER) is Decision.RECORD_AND_SAMPLE


def test_new_traces_are_kept_at_the_configured_ratio_and_jobs_always(monkeypatch) -> None:
    monkeypatch.delenv("OTEL_TRACES_SAMPLER", raising=False)
    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", "0")
    sampler = telemetry.sampler()
    assert "TraceIdRatioBased{0.0}" in sampler.get_description()
    assert "ParentBased" in sampler.get_description()
    assert decision(sampler, kind=SpanKind.SERVER) is Decision.DROP
    assert decision(sampler, attributes={telemetry.PRIORITY: 1}) is Decision.RECORD_AND_SAMPLE


def test_a_sampler_ratio_that_is_not_a_ratio_is_refused(monkeypatch) -> None:
    monkeypatch.delenv("OTEL_TRACES_SAMPLER", raising=False)
    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", "1.5")
    with pytest.raises(ValueError, match="OTEL_TRACES_SAMPLER_ARG"):
        telemetry.sampler()


def test_traceparent_is_parsed_as_the_w3c_header_and_anything_else_is_ignored() -> None:
    parsed = telemetry.parse_traceparent(SAMPLED)
    assert parsed is not None and parsed.is_remote and parsed.trace_flags.sampled
    assert telemetry.traceparent(parsed) == SAMPLED
    later_version = telemetry.parse_traceparent("cc" + SAMPLED[2:] + "-what-comes-later")
    assert later_version is not None and later_version.trace_id == parsed.trace_id
    for bad in (
        "",
        "00-0af7",
        "ff-" + SAMPLED[3:],
        SAMPLED.replace("0af7", "zzzz"),
        f"00-{'0' * 32}-b7ad6b7169203331-01",
    ):
        assert telemetry.parse_traceparent(bad) is None


def test_nothing_is_captured_or_traced_when_tracing_is_off() -> None:
    assert not telemetry.enabled
    with telemetry.span("work") as current:
        assert telemetry.capture() == {}
        assert not current.is_recording()


def test_work_stored_with_a_context_continues_its_trace(spans: InMemorySpanExporter) -> None:
    with telemetry.span("request"):
        stored = telemetry.capture()
    with telemetry.span("later work", parent=stored):
        pass
    request, later = spans.get_finished_spans()
    assert later.context.trace_id == request.context.trace_id
    assert later.parent is not None and later.parent.span_id == request.context.span_id


def test_work_long_after_its_cause_starts_a_trace_linked_to_it(spans: InMemorySpanExporter) -> None:
    with telemetry.span("case opened"):
        stored = telemetry.capture()
    stored["captured_at"] = str(int(time.time()) - 3 * 86400)
    with telemetry.span("attempt", parent=stored, fresh_for=timedelta(hours=1)):
        pass
    opened, attempt = spans.get_finished_spans()
    assert attempt.context.trace_id != opened.context.trace_id
    assert attempt.parent is None
    assert [link.context.span_id for link in attempt.links] == [opened.context.span_id]


def test_a_late_new_trace_follows_its_causes_sampling_decision(spans: InMemorySpanExporter) -> None:
    stale = {"traceparent": UNSAMPLED, "captured_at": "0"}
    with telemetry.span("attempt", parent=stale, fresh_for=timedelta(hours=1)) as current:
        assert not current.is_recording()
    assert spans.get_finished_spans() == ()


def test_a_scheduled_job_is_kept_whatever_the_ratio() -> None:
    with traced_in_process(ratio=0) as spans:
        with telemetry.span("request") as request:
            assert not request.is_recording()
        with telemetry.span("scheduled run", keep=True) as run:
            assert run.is_recording()
    assert [s.name for s in spans.get_finished_spans()] == ["scheduled run"]
