"""An OTLP/gRPC trace receiver (the protocol Jaeger's collector accepts on port 4317), in-process.

Tests start services as processes with `OTEL_EXPORTER_OTLP_ENDPOINT` pointing here and assert on
the spans they export. `python -m billing_devtools.testing.otlp [port]` runs it on its own and
prints each trace as it arrives, e.g. next to `make run`.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1 import common_pb2

KINDS = {0: "unspecified", 1: "internal", 2: "server", 3: "client", 4: "producer", 5: "consumer"}


@dataclass(frozen=True)
class ReceivedSpan:
    service: str
    name: str
    kind: str
    trace_id: str
    span_id: str
    parent_id: str
    start_ns: int
    end_ns: int
    attributes: dict[str, Any] = field(default_factory=dict)
    links: tuple[tuple[str, str], ...] = ()  # (trace id, span id)
    error: bool = False
    status: str = ""  # the error's description

    def line(self) -> str:
        return f"{self.service:<16} {self.kind:<8} {self.name}" + (
            f"  [error: {self.status}]" if self.error else ""
        )


def _value(value: common_pb2.AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [_value(v) for v in value.array_value.values]
    return getattr(value, kind) if kind else None


class _TraceService(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, received: Callable[[list[ReceivedSpan]], None]) -> None:
        self._received = received

    async def Export(
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: Any
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        spans: list[ReceivedSpan] = []
        for resource_spans in request.resource_spans:
            resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
            service = str(resource.get("service.name", ""))
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    spans.append(
                        ReceivedSpan(
                            service=service,
                            name=span.name,
                            kind=KINDS.get(span.kind, str(span.kind)),
                            trace_id=span.trace_id.hex(),
                            span_id=span.span_id.hex(),
                            parent_id=span.parent_span_id.hex(),
                            start_ns=span.start_time_unix_nano,
                            end_ns=span.end_time_unix_nano,
                            attributes={a.key: _value(a.value) for a in span.attributes},
                            links=tuple((link.trace_id.hex(), link.span_id.hex()) for link in span.links),
                            error=span.status.code == span.status.STATUS_CODE_ERROR,
                            status=span.status.message,
                        )
                    )
        self._received(spans)
        return trace_service_pb2.ExportTraceServiceResponse()


class OtlpReceiver:
    """Keeps every span exported to it; `env()` points a service process at it."""

    def __init__(self) -> None:
        self.spans: list[ReceivedSpan] = []
        self.port = 0
        self._server: grpc.aio.Server | None = None
        self.listeners: list[Callable[[list[ReceivedSpan]], None]] = []

    async def start(self, port: int = 0) -> None:
        server = grpc.aio.server()
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(_TraceService(self._keep), server)  # type: ignore[no-untyped-call]
        self.port = server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        self._server = server

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.stop(None)

    def _keep(self, spans: list[ReceivedSpan]) -> None:
        self.spans.extend(spans)
        for listener in self.listeners:
            listener(spans)

    def env(self, **overrides: str) -> dict[str, str]:
        """Tracing settings of a service exporting here, every trace kept, spans sent within 100 ms."""
        return {
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{self.port}",
            "OTEL_BSP_SCHEDULE_DELAY": "100",
            "OTEL_TRACES_SAMPLER_ARG": "1",
            **overrides,
        }

    def trace(self, trace_id: str) -> list[ReceivedSpan]:
        return [span for span in self.spans if span.trace_id == trace_id]

    def named(self, name: str) -> list[ReceivedSpan]:
        return [span for span in self.spans if span.name == name]


@contextlib.asynccontextmanager
async def otlp_receiver() -> AsyncIterator[OtlpReceiver]:
    receiver = OtlpReceiver()
    await receiver.start()
    try:
        yield receiver
    finally:
        await receiver.stop()


def tree(spans: list[ReceivedSpan]) -> str:
    """One trace drawn as an indented tree (children under their parents, in start order)."""
    by_id = {span.span_id: span for span in spans}
    children: dict[str, list[ReceivedSpan]] = {}
    for span in sorted(spans, key=lambda s: s.start_ns):
        parent = span.parent_id if span.parent_id in by_id else ""
        children.setdefault(parent, []).append(span)
    lines: list[str] = []

    def draw(parent: str, depth: int) -> None:
        for span in children.get(parent, []):
            lines.append("  " * depth + span.line())
            draw(span.span_id, depth + 1)

    draw("", 0)
    return "\n".join(lines)


async def _serve(port: int) -> None:
    receiver = OtlpReceiver()
    traces: dict[str, list[ReceivedSpan]] = {}
    printed: dict[str, int] = {}

    def show(spans: list[ReceivedSpan]) -> None:
        for span in spans:
            traces.setdefault(span.trace_id, []).append(span)
        for trace_id in {span.trace_id for span in spans}:
            printed[trace_id] = len(traces[trace_id])
            services = sorted({s.service for s in traces[trace_id]})
            print(f"\ntrace {trace_id}: {printed[trace_id]} spans from {', '.join(services)}")
            print(tree(traces[trace_id]), flush=True)

    receiver.listeners.append(show)
    await receiver.start(port)
    print(f"OTLP/gRPC receiver on 127.0.0.1:{receiver.port}", flush=True)
    await asyncio.Event().wait()


def main() -> None:
    asyncio.run(_serve(int(sys.argv[1]) if len(sys.argv) > 1 else 4317))


if __name__ == "__main__":
    main()
