"""Tracing inside the test process: spans kept in memory, and a service's log lines as it writes
them (JSON with trace ids), for tests of one part at a time."""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

from billing_common import telemetry
from billing_common.logging import JsonFormatter


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


class JsonLines(logging.Handler):
    def __init__(self, service: str) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(JsonFormatter(service))
        self.lines: list[dict[str, object]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(json.loads(self.format(record)))


@contextlib.contextmanager
def json_lines_of(service: str, level: int = logging.DEBUG) -> Iterator[JsonLines]:
    """The lines the service's loggers write at `level` and above while the block runs."""
    handler = JsonLines(service)
    logger = logging.getLogger(service)
    logger.addHandler(handler)
    previous = logger.level
    logger.setLevel(level)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous)
