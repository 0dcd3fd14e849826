"""gRPC server plumbing on grpc.aio: one interceptor for every cross-cutting concern.

For each call, in order: correlation id, authentication and allow-list, the validation boundary
(undecodable bytes, then the contract's rules: `billing_common.validation`), the handler, mapping of
`BillingError`s to status codes (INVALID_ARGUMENT carries google.rpc.BadRequest field
violations; a failed database, Redis or broker is UNAVAILABLE, never INTERNAL), a log line
(failed and slow calls; every call at DEBUG), and Prometheus metrics.
One wrapper instead of a chain keeps the hot path (quota checks) short.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from typing import Any, TypeAlias, cast

import grpc
from google.protobuf import any_pb2
from google.protobuf.message import DecodeError, Message
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status
from prometheus_client import Counter, Histogram

from billing_common import context, telemetry
from billing_common.auth import ACTING_FOR_HEADER, Authenticator
from billing_common.errors import (
    AlreadyExists,
    BillingError,
    Conflict,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)
from billing_common.faults import is_dependency_failure
from billing_common.pan import redact_card_numbers
from billing_common.validation import RequestValidator

log = logging.getLogger("billing.rpc")

RPC_LATENCY = Histogram(
    "grpc_server_handling_seconds",
    "RPC latency by method and status code",
    ["service", "method", "code"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
RPC_COUNT = Counter(
    "grpc_server_handled_total", "RPCs handled by method and status code", ["service", "method", "code"]
)

_CODES: list[tuple[type[BillingError], grpc.StatusCode]] = [
    (InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),
    (NotFound, grpc.StatusCode.NOT_FOUND),
    (AlreadyExists, grpc.StatusCode.ALREADY_EXISTS),
    (Conflict, grpc.StatusCode.ABORTED),
    (FailedPrecondition, grpc.StatusCode.FAILED_PRECONDITION),
    (ResourceExhausted, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (Unavailable, grpc.StatusCode.UNAVAILABLE),
    (PermissionDenied, grpc.StatusCode.PERMISSION_DENIED),
    (Unauthenticated, grpc.StatusCode.UNAUTHENTICATED),
]

CORRELATION_HEADER = "x-correlation-id"
# What a caller hears when PostgreSQL, Redis or RabbitMQ failed under its call: every change is made
# in a transaction with its idempotency key, so the same call again is safe.
DEPENDENCY_UNAVAILABLE = "a dependency of this service is unavailable; retry with the same idempotency key"
# Error texts are bounded and card numbers are cut out of them: a service's error may quote input.
MAX_ERROR_CHARS = 300
Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"
Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"
# What a call's guard restores when it ends: start, correlation id, caller, and its server span.
Tokens: TypeAlias = "tuple[float, Any, Any, telemetry.ServerSpan | None]"


def status_code_for(error: BillingError) -> grpc.StatusCode:
    for kind, code in _CODES:
        if isinstance(error, kind):
            return code
    return grpc.StatusCode.FAILED_PRECONDITION


def safe_text(text: str, limit: int = MAX_ERROR_CHARS) -> str:
    """Text fit to leave the service in an answer or a log line: short and without card numbers."""
    if len(text) > limit:
        text = text[:limit] + "…"
    return redact_card_numbers(text)


RETRY_PUSHBACK_HEADER = "grpc-retry-pushback-ms"


def rich_status(error: BillingError) -> grpc.Status:
    """A google.rpc.Status carrying field violations and any protobuf attachments."""
    code = status_code_for(error)
    status = status_pb2.Status(code=getattr(code_pb2, code.name), message=safe_text(error.message))
    if isinstance(error, InvalidArgument):
        bad_request = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(
                    field=safe_text(v.field, 200), description=safe_text(v.description)
                )
                for v in error.violations[:50]
            ]
        )
        status.details.append(_pack(bad_request))
    if error.details:
        status.details.append(
            _pack(error_details_pb2.ErrorInfo(reason=type(error).__name__, metadata=error.details))
        )
    pushback: list[tuple[str, str]] = []
    for attachment in getattr(error, "attachments", ()):
        if isinstance(attachment, Message):
            status.details.append(_pack(attachment))
        if isinstance(attachment, error_details_pb2.RetryInfo):
            # gRPC's own retry (our channels retry UNAVAILABLE) waits what the server asks for.
            delay_ms = attachment.retry_delay.ToMilliseconds()
            pushback.append((RETRY_PUSHBACK_HEADER, str(max(delay_ms, 1))))
    converted = rpc_status.to_status(status)
    if pushback:
        converted = converted._replace(trailing_metadata=(*converted.trailing_metadata, *pushback))
    return cast(grpc.Status, converted)


def _pack(message: Message) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


class BillingInterceptor(grpc.aio.ServerInterceptor):
    def __init__(
        self,
        service: str,
        authenticator: Authenticator,
        *,
        slow_call: timedelta,
        validator: RequestValidator | None = None,
    ) -> None:
        self._service = service
        self._auth = authenticator
        self.validator = validator
        # Not a line per successful call at INFO: it costs a busy pod throughput (README, Benchmarks).
        self._slow_call_s = slow_call.total_seconds()
        # Handlers are static per method, so each is wrapped once, not on every call.
        self._wrapped: dict[str, Handler | None] = {}
        # The labelled metrics of each (method, code), looked up once: `labels()` costs more
        # than the observation itself.
        self._metrics: dict[tuple[str, grpc.StatusCode], tuple[Any, Any]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]],
        details: grpc.HandlerCallDetails,
    ) -> Handler | None:
        method: str = details.method
        if method in self._wrapped:
            return self._wrapped[method]
        handler = await continuation(details)
        if handler is not None and not self._auth.is_open(method):
            handler = _wrap(handler, _Guard(self, method))
        self._wrapped[method] = handler
        return handler

    def authorize(self, method: str, grpc_context: Context) -> None:
        authorization = acting_for = None
        for key, value in grpc_context.invocation_metadata() or ():
            if key == "authorization" and isinstance(value, str):
                authorization = value
            elif key == CORRELATION_HEADER and value:
                context.correlation_id.set(str(value))
            elif key == ACTING_FOR_HEADER and isinstance(value, str):
                acting_for = value
        context.caller.set(self._auth.authorize(method, authorization, acting_for))

    def finish(self, method: str, started: float, code: grpc.StatusCode, error: str = "") -> None:
        elapsed = time.perf_counter() - started
        metrics = self._metrics.get((method, code))
        if metrics is None:
            name = method.rsplit("/", 1)[-1]
            metrics = self._metrics[(method, code)] = (
                RPC_LATENCY.labels(self._service, name, code.name),
                RPC_COUNT.labels(self._service, name, code.name),
            )
        metrics[0].observe(elapsed)
        metrics[1].inc()
        if telemetry.enabled:
            telemetry.finish_server_span(method, code.name, code.value[0], error, elapsed)
        if code is grpc.StatusCode.OK:
            slow = elapsed >= self._slow_call_s
            level, message = (logging.INFO, "slow rpc") if slow else (logging.DEBUG, "rpc")
        else:
            level = logging.INFO if code is grpc.StatusCode.NOT_FOUND else logging.WARNING
            message = "rpc"
        if log.isEnabledFor(level):
            log.log(
                level,
                message,
                extra={
                    "method": method,
                    "code": code.name,
                    "caller": context.caller.get(),
                    "ms": round(elapsed * 1000, 3),
                    "error": error,
                },
            )


class _Guard:
    """Everything done around one call of one method; shared by the unary and streaming wrappers."""

    def __init__(self, owner: BillingInterceptor, method: str) -> None:
        self.owner = owner
        self.method = method
        self.validate = owner.validator.for_method(method) if owner.validator is not None else None

    def enter(self, grpc_context: Context) -> Tokens:
        started = time.perf_counter()
        correlation, caller = context.correlation_id.set(""), context.caller.set("")
        self.owner.authorize(self.method, grpc_context)
        if not context.correlation_id.get():
            context.correlation_id.set(context.new_correlation_id())
        traced = (
            telemetry.start_server_span(self.method, grpc_context.invocation_metadata(), context.caller.get())
            if telemetry.enabled
            else None
        )
        return started, correlation, caller, traced

    def leave(self, tokens: Tokens) -> None:
        if tokens[3] is not None:
            tokens[3].end()
        context.correlation_id.reset(tokens[1])
        context.caller.reset(tokens[2])

    def ok(self, started: float) -> None:
        self.owner.finish(self.method, started, grpc.StatusCode.OK)

    def check(self, request: Any) -> None:
        """The validation boundary, after authentication: a stranger learns nothing of our rules."""
        if request is UNDECODABLE:
            raise InvalidArgument.of("request", "is not a valid protobuf message of this method's type")
        if self.validate is not None:
            self.validate(request)

    async def checked_stream(self, requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
        """A client stream's messages, each checked as it arrives; the path names its position."""
        index = 0
        async for request in requests:
            try:
                self.check(request)
            except InvalidArgument as error:
                raise InvalidArgument(
                    FieldViolation(f"[{index}].{v.field}", v.description) for v in error.violations
                ) from None
            index += 1
            yield request

    async def fail(self, grpc_context: Context, started: float, error: BaseException) -> None:
        if isinstance(error, BillingError):
            status = rich_status(error)
            self.owner.finish(self.method, started, status.code, status.details or "")
            await grpc_context.abort(status.code, status.details, status.trailing_metadata)
        if isinstance(error, NotImplementedError):
            self.owner.finish(self.method, started, grpc.StatusCode.UNIMPLEMENTED)
            await grpc_context.abort(grpc.StatusCode.UNIMPLEMENTED, f"{self.method} is not implemented yet")
        if isinstance(error, asyncio.CancelledError):
            self.owner.finish(self.method, started, grpc.StatusCode.CANCELLED)
            raise error
        if isinstance(error, grpc.aio.AbortError | grpc.RpcError):
            code = grpc_context.code()
            self.owner.finish(
                self.method, started, code if isinstance(code, grpc.StatusCode) else grpc.StatusCode.UNKNOWN
            )
            raise error
        if is_dependency_failure(error):
            self.owner.finish(
                self.method, started, grpc.StatusCode.UNAVAILABLE, f"{type(error).__name__}: {error}"
            )
            await grpc_context.abort(grpc.StatusCode.UNAVAILABLE, DEPENDENCY_UNAVAILABLE)
        log.exception("unexpected error in %s", self.method)
        self.owner.finish(self.method, started, grpc.StatusCode.INTERNAL, safe_text(repr(error)))
        await grpc_context.abort(
            grpc.StatusCode.INTERNAL, "internal error; see the service log for this correlation id"
        )


class _Undecodable:
    """What the lenient deserializer hands on for bytes that are not a message of the method's type."""


UNDECODABLE = _Undecodable()


def _lenient(deserialize: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    """Decode failures become a value the guard refuses after authentication, as INVALID_ARGUMENT.

    grpc would otherwise answer UNKNOWN and log a traceback, before any interceptor runs.
    """
    if deserialize is None:
        return None

    def parse(data: bytes) -> Any:
        try:
            return deserialize(data)
        except (DecodeError, ValueError, TypeError, RuntimeError):
            return UNDECODABLE

    return parse


def _wrap(handler: Any, guard: _Guard) -> Handler:
    deserialize = _lenient(handler.request_deserializer)
    if handler.unary_unary or handler.stream_unary:
        inner = handler.unary_unary or handler.stream_unary
        streamed = handler.stream_unary is not None

        async def unary_response(request: Any, grpc_context: Context) -> Any:
            started = time.perf_counter()
            tokens: Tokens | None = None
            try:
                tokens = guard.enter(grpc_context)
                if streamed:
                    request = guard.checked_stream(request)
                else:
                    guard.check(request)
                response = await inner(request, grpc_context)
                guard.ok(started)
                return response
            except BaseException as error:
                await guard.fail(grpc_context, started, error)
            finally:
                if tokens:
                    guard.leave(tokens)

        factory: Any = (
            grpc.unary_unary_rpc_method_handler
            if handler.unary_unary
            else grpc.stream_unary_rpc_method_handler
        )
        return factory(unary_response, deserialize, handler.response_serializer)  # type: ignore[no-any-return]
    streaming = handler.unary_stream or handler.stream_stream

    async def streaming_response(request: Any, grpc_context: Context) -> AsyncIterator[Any]:
        started = time.perf_counter()
        tokens: Tokens | None = None
        try:
            tokens = guard.enter(grpc_context)
            if handler.stream_stream is not None:
                request = guard.checked_stream(request)
            else:
                guard.check(request)
            async for item in streaming(request, grpc_context):
                yield item
            guard.ok(started)
        except BaseException as error:
            await guard.fail(grpc_context, started, error)
        finally:
            if tokens:
                guard.leave(tokens)

    factory = (
        grpc.unary_stream_rpc_method_handler
        if handler.unary_stream
        else grpc.stream_stream_rpc_method_handler
    )
    return factory(streaming_response, deserialize, handler.response_serializer)  # type: ignore[no-any-return]
