"""Tracing inside the test process: spans kept in memory, for tests of one part at a time."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

from billing_common import telemetry


@contextlib.contextmanager
def traced_in_process(ratio: float = 1.0) -> Iterator[InMemorySpanExporter]:
    """Trace as a service with an OTLP endpoint would (same sampler, same instrumentation)."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider(
        resource=Resource.create({"service.name": "test"}),
        sampler=telemetry.BillingSampler(ParentBased(TraceIdRatioBased(ratio))),
    )
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    telemetry.install(provider)
    try:
        yield exporter
    finally:
        telemetry.uninstall()
