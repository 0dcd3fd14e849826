"""Tracing: OTLP export, a sampler that keeps idle work out of Jaeger, and the helpers with which
work that outlives its request carries the request's trace.

- Tracing is on only where `OTEL_EXPORTER_OTLP_ENDPOINT` is set; otherwise nothing here makes a
  span or touches a context (`enabled` is False and every helper returns at once).
- gRPC calls are traced by the host itself: the server guard (`grpc_server`) opens the server span
  and the stamping channel (`grpc_client`) the client span and the `traceparent` header. There
  are no OpenTelemetry gRPC interceptors: they ran on every call, sampled or not.
- Outbox rows, runs, work items, charges, cases and attempts store `capture()` when they are
  written; whoever works them later opens its span with `span(..., parent=stored)`, so one billing
  run is one trace across pods, queues and days (or, past `fresh_for`, a new trace linked to it).
- Sampling (`sampler()`): parent-based, with a ratio for new traces from `OTEL_TRACES_SAMPLER_ARG`
  (or whatever `OTEL_TRACES_SAMPLER` names). A library call made outside any request or job (a
  poll, a health query) never starts a trace; scheduled jobs always do; a failed call of an
  unsampled trace still leaves its own server span.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from datetime import timedelta
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import (
    Decision,
    ParentBased,
    Sampler,
    SamplingResult,
    TraceIdRatioBased,
    _get_from_env_or_default,  # the SDK's own reading of OTEL_TRACES_SAMPLER(_ARG)
)
from opentelemetry.trace import Link, NonRecordingSpan, Span, SpanContext, SpanKind, Status, StatusCode
from opentelemetry.trace.span import TraceFlags, TraceState
from opentelemetry.util.types import Attributes

log = logging.getLogger(__name__)

TraceContext = dict[str, str]
"""A stored trace context: W3C `traceparent` (and `tracestate`), plus `captured_at` (unix seconds)."""

enabled = False
_provider: TracerProvider | None = None
_tracer: trace.Tracer = trace.NoOpTracer()
# The sampler follows the caller's decision: a call of an unsampled trace needs no sampler and no span.
_parent_decides = False

# Root spans that set this attribute are kept (1) or dropped (0) whatever the ratio says.
PRIORITY = "sampling.priority"
# A span recorded after the fact for a failure in a trace that was not sampled.
KEPT_FOR_ERROR = "billing.kept_for_error"
_TRACEPARENT = "traceparent"
_TRACESTATE = "tracestate"
_CAPTURED_AT = "captured_at"


# ---------------------------------------------------------------- set-up


class BillingSampler(Sampler):
    """Parent-based sampling with three rules in front of it (see the module docstring)."""

    def __init__(self, inner: Sampler) -> None:
        self.inner = inner

    def should_sample(
        self,
        parent_context: otel_context.Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        trace_state: TraceState | None = None,
    ) -> SamplingResult:
        parent = trace.get_current_span(parent_context).get_span_context()
        if not parent.is_valid:
            if kind is SpanKind.CLIENT:
                return SamplingResult(Decision.DROP)  # a library call outside any request or job
            priority = attributes.get(PRIORITY) if attributes else None
            if priority is not None:
                keep = Decision.RECORD_AND_SAMPLE if priority else Decision.DROP
                return SamplingResult(keep, attributes)
        elif attributes and attributes.get(KEPT_FOR_ERROR):
            return SamplingResult(Decision.RECORD_AND_SAMPLE, attributes, parent.trace_state)
        return self.inner.should_sample(parent_context, trace_id, name, kind, attributes, links, trace_state)

    def get_description(self) -> str:
        return f"BillingSampler{{{self.inner.get_description()}}}"


def sampler() -> BillingSampler:
    """`OTEL_TRACES_SAMPLER` when set; otherwise parent-based with `OTEL_TRACES_SAMPLER_ARG`
    (default 1) as the share of new traces kept."""
    if os.environ.get("OTEL_TRACES_SAMPLER"):
        return BillingSampler(_get_from_env_or_default())
    text = os.environ.get("OTEL_TRACES_SAMPLER_ARG", "") or "1"
    try:
        ratio = float(text)
    except ValueError:
        raise ValueError(f"OTEL_TRACES_SAMPLER_ARG={text!r} is not a ratio from 0 to 1") from None
    if not 0 <= ratio <= 1:
        raise ValueError(f"OTEL_TRACES_SAMPLER_ARG={text!r} is not a ratio from 0 to 1")
    return BillingSampler(ParentBased(TraceIdRatioBased(ratio)))


def setup_telemetry(service: str) -> None:
    """Export spans by OTLP/gRPC where `OTEL_EXPORTER_OTLP_ENDPOINT` is set; else trace nothing."""
    endpoint = os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    if not endpoint or enabled:
        return
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

    provider = TracerProvider(
        resource=Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME", service)}),
        sampler=sampler(),
    )
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
    install(provider)
    log.info(
        "exporting traces", extra={"otlp_endpoint": endpoint, "sampler": provider.sampler.get_description()}
    )


def install(provider: TracerProvider) -> None:
    """Trace through `provider` from now on, with PostgreSQL and Redis calls as child spans."""
    global enabled, _provider, _tracer, _parent_decides
    from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor
    from opentelemetry.instrumentation.redis import RedisInstrumentor

    if _provider is None:
        trace.set_tracer_provider(provider)
    _provider = provider
    _tracer = provider.get_tracer("billing")
    sampling = provider.sampler
    _parent_decides = isinstance(sampling, BillingSampler) and isinstance(sampling.inner, ParentBased)
    AsyncPGInstrumentor().instrument(tracer_provider=provider)
    RedisInstrumentor().instrument(tracer_provider=provider)
    enabled = True


def uninstall() -> None:
    """Stop tracing (tests that traced one service in-process)."""
    global enabled, _tracer
    from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor
    from opentelemetry.instrumentation.redis import RedisInstrumentor

    AsyncPGInstrumentor().uninstrument()
    RedisInstrumentor().uninstrument()
    enabled = False
    _tracer = trace.NoOpTracer()


def shutdown() -> None:
    """Export what is still buffered (at the end of the process)."""
    if _provider is not None:
        _provider.shutdown()


# ---------------------------------------------------------------- stored contexts


def capture() -> TraceContext:
    """The current trace context, to store with work that outlives this request; {} without one."""
    if not enabled:
        return {}
    span_context = trace.get_current_span().get_span_context()
    if not span_context.is_valid:
        return {}
    stored = {_TRACEPARENT: traceparent(span_context), _CAPTURED_AT: str(int(time.time()))}
    if span_context.trace_state:
        stored[_TRACESTATE] = span_context.trace_state.to_header()
    return stored


def traceparent(span_context: SpanContext) -> str:
    return f"00-{span_context.trace_id:032x}-{span_context.span_id:016x}-{span_context.trace_flags:02x}"


def parse_traceparent(value: str, state: str = "") -> SpanContext | None:
    """A remote span context from a W3C `traceparent` header, or None if it is not one."""
    if len(value) == 55 and value[2] == "-" and value[35] == "-" and value[52] == "-" and value[:2] == "00":
        trace_hex, span_hex, flags_hex = value[3:35], value[36:52], value[53:]
    else:  # another version: its first four fields mean the same
        parts = value.strip().split("-")
        if len(parts) < 4 or len(parts[0]) != 2 or parts[0] in ("00", "ff"):
            return None
        trace_hex, span_hex, flags_hex = parts[1], parts[2], parts[3]
        if len(trace_hex) != 32 or len(span_hex) != 16 or len(flags_hex) != 2:
            return None
    try:
        trace_id, span_id, flags = int(trace_hex, 16), int(span_hex, 16), int(flags_hex, 16)
    except ValueError:
        return None
    if not trace_id or not span_id:
        return None
    return SpanContext(
        trace_id,
        span_id,
        is_remote=True,
        trace_flags=TraceFlags(flags & TraceFlags.SAMPLED),
        trace_state=TraceState.from_header([state]) if state else None,
    )


def _stored_span_context(stored: Mapping[str, Any]) -> SpanContext | None:
    value = stored.get(_TRACEPARENT)
    if not isinstance(value, str):
        return None
    state = stored.get(_TRACESTATE)
    return parse_traceparent(value, state if isinstance(state, str) else "")


def _age_s(stored: Mapping[str, Any]) -> float:
    try:
        return time.time() - float(stored[_CAPTURED_AT])
    except (KeyError, TypeError, ValueError):
        return 0.0


def trace_id() -> str:
    """The current trace id (hex), or "" when there is no trace."""
    span_context = trace.get_current_span().get_span_context()
    return format(span_context.trace_id, "032x") if span_context.is_valid else ""


# ---------------------------------------------------------------- spans of our own


@contextlib.contextmanager
def span(
    name: str,
    *,
    attributes: Mapping[str, Any] | None = None,
    parent: Mapping[str, Any] | None = None,
    links: Sequence[Mapping[str, Any]] = (),
    fresh_for: timedelta | None = None,
    keep: bool = False,
    kind: SpanKind = SpanKind.INTERNAL,
) -> Iterator[Span]:
    """A span of ours as the current span, ended (and marked failed on an exception) on exit.

    `parent`: a stored context to continue instead of the current one. When it was captured longer
    than `fresh_for` ago, the span starts a new trace with a link to it instead, and keeps or
    drops it as that trace was sampled. `keep`: a new trace is always kept (a scheduled job).
    `links`: other stored contexts that caused this work (a batch of several runs' items).
    """
    if not enabled:
        yield trace.INVALID_SPAN
        return
    values = dict(attributes or {})
    context: otel_context.Context | None = None
    link_contexts = [found for stored in links if (found := _stored_span_context(stored)) is not None]
    if parent is not None:
        cause = _stored_span_context(parent)
        if cause is not None and fresh_for is not None and _age_s(parent) > fresh_for.total_seconds():
            context = otel_context.Context()
            link_contexts.insert(0, cause)
            values[PRIORITY] = 1 if cause.trace_flags.sampled else 0
        elif cause is not None:
            context = trace.set_span_in_context(NonRecordingSpan(cause))
        else:
            context = otel_context.Context()
    if keep and PRIORITY not in values and not trace.get_current_span(context).get_span_context().is_valid:
        values[PRIORITY] = 1
    with _tracer.start_as_current_span(
        name,
        context=context,
        kind=kind,
        attributes=values,
        links=[Link(found) for found in link_contexts],
    ) as current:
        yield current


@contextlib.contextmanager
def within(stored: Mapping[str, Any]) -> Iterator[None]:
    """Make a stored context current without a span of its own (what is written here joins it)."""
    found = _stored_span_context(stored) if enabled else None
    if found is None:
        yield
        return
    token = otel_context.attach(trace.set_span_in_context(NonRecordingSpan(found)))
    try:
        yield
    finally:
        otel_context.detach(token)


def link(stored: Mapping[str, Any]) -> None:
    """Link the current span to a stored context: the work is about what that trace did."""
    if not enabled:
        return
    current = trace.get_current_span()
    cause = _stored_span_context(stored)
    if cause is not None and current.is_recording():
        current.add_link(cause)


def start_producer_span(event_type: str, stored: Mapping[str, Any], attributes: Attributes) -> Span:
    """The span of publishing one outbox row, under the context stored with the row."""
    cause = _stored_span_context(stored)
    context = trace.set_span_in_context(NonRecordingSpan(cause)) if cause else otel_context.Context()
    return _tracer.start_span(f"publish {event_type}", context, SpanKind.PRODUCER, attributes)


def message_headers(producer: Span) -> dict[str, str]:
    """What a published message carries so that its consumer continues the trace."""
    span_context = producer.get_span_context()
    if not span_context.is_valid:
        return {}
    headers = {_TRACEPARENT: traceparent(span_context)}
    if span_context.trace_state:
        headers[_TRACESTATE] = span_context.trace_state.to_header()
    return headers


def failed(current: Span, error: BaseException) -> None:
    """Mark a span as failed by an error that was handled (one leaving a `span` block marks it itself)."""
    current.record_exception(error)
    current.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))


# ---------------------------------------------------------------- gRPC server and client


class ServerSpan:
    """The server span of one call, current while its handler runs."""

    __slots__ = ("span", "token")

    def __init__(self, span: Span, token: object) -> None:
        self.span = span
        self.token = token

    def end(self) -> None:
        self.span.end()
        otel_context.detach(self.token)  # type: ignore[arg-type]


def start_server_span(method: str, metadata: Any, caller: str) -> ServerSpan:
    """Continue the caller's trace (its `traceparent` header) or start one, for `method`."""
    parent = state = ""
    for key, value in metadata or ():
        if key == _TRACEPARENT:
            parent = value
        elif key == _TRACESTATE:
            state = value
    remote = parse_traceparent(parent, state) if parent else None
    if remote is not None and not remote.trace_flags.sampled and _parent_decides:
        # The caller's unsampled trace goes on, for downstream calls and log lines, without a span.
        unsampled = NonRecordingSpan(remote)
        return ServerSpan(unsampled, otel_context.attach(trace.set_span_in_context(unsampled)))
    context = trace.set_span_in_context(NonRecordingSpan(remote)) if remote else otel_context.Context()
    service, _, name = method.lstrip("/").rpartition("/")
    server_span = _tracer.start_span(
        method.lstrip("/"),
        context,
        SpanKind.SERVER,
        {"rpc.system": "grpc", "rpc.service": service, "rpc.method": name, "billing.caller": caller},
    )
    return ServerSpan(server_span, otel_context.attach(trace.set_span_in_context(server_span, context)))


# Status codes that are the server's fault, hence errors on a server span (OpenTelemetry's rule).
SERVER_FAULTS = frozenset(
    {"UNKNOWN", "DEADLINE_EXCEEDED", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS"}
)


def finish_server_span(method: str, code_name: str, code_value: int, error: str, elapsed_s: float) -> None:
    """Record the call's status on the current server span. A server fault in a trace that is not
    sampled is recorded all the same, as a span of its own (its parent is not exported, but the
    failure can be found, with its trace id, next to the log lines that carry it)."""
    current = trace.get_current_span()
    if current.is_recording():
        current.set_attribute("rpc.grpc.status_code", code_value)
        if code_name in SERVER_FAULTS:
            current.set_status(Status(StatusCode.ERROR, error or code_name))
        return
    if code_name not in SERVER_FAULTS or not current.get_span_context().is_valid:
        return
    failed_span = _tracer.start_span(
        method.lstrip("/"),
        kind=SpanKind.SERVER,
        attributes={KEPT_FOR_ERROR: True, "rpc.system": "grpc", "rpc.grpc.status_code": code_value},
        start_time=time.time_ns() - int(elapsed_s * 1e9),
    )
    failed_span.set_status(Status(StatusCode.ERROR, error or code_name))
    failed_span.end()


def client_span(method: str) -> tuple[Span | None, str, str]:
    """For an outgoing call: its client span (when the current trace is sampled) and the
    `traceparent`/`tracestate` values to send ("" without a current trace)."""
    current = trace.get_current_span()
    span_context = current.get_span_context()
    if not span_context.is_valid:
        return None, "", ""
    outgoing: Span | None = None
    if current.is_recording():
        service, _, name = method.lstrip("/").rpartition("/")
        outgoing = _tracer.start_span(
            method.lstrip("/"),
            kind=SpanKind.CLIENT,
            attributes={"rpc.system": "grpc", "rpc.service": service, "rpc.method": name},
        )
        span_context = outgoing.get_span_context()
    state = span_context.trace_state.to_header() if span_context.trace_state else ""
    return outgoing, traceparent(span_context), state


def end_client_span(outgoing: Span, code_name: str, code_value: int, details: str = "") -> None:
    outgoing.set_attribute("rpc.grpc.status_code", code_value)
    if code_name != "OK":
        outgoing.set_status(Status(StatusCode.ERROR, details or code_name))
    outgoing.end()
