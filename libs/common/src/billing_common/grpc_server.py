"""gRPC server plumbing on grpc.aio: one interceptor for every cross-cutting concern.

For each call, in order: correlation id, authentication and allow-list, the handler, mapping of
`BillingError`s to status codes (INVALID_ARGUMENT carries google.rpc.BadRequest field
violations), a request log line, and Prometheus metrics. One wrapper instead of a chain keeps
the hot path (quota checks) short.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from google.protobuf import any_pb2
from google.protobuf.message import Message
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status
from prometheus_client import Counter, Histogram

from billing_common import context
from billing_common.auth import Authenticator
from billing_common.errors import (
    AlreadyExists,
    BillingError,
    Conflict,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)

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


def status_code_for(error: BillingError) -> grpc.StatusCode:
    for kind, code in _CODES:
        if isinstance(error, kind):
            return code
    return grpc.StatusCode.FAILED_PRECONDITION


def rich_status(error: BillingError) -> grpc.Status:
    """A google.rpc.Status carrying field violations and any protobuf attachments."""
    code = status_code_for(error)
    status = status_pb2.Status(code=getattr(code_pb2, code.name), message=error.message)
    if isinstance(error, InvalidArgument):
        bad_request = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(field=v.field, description=v.description)
                for v in error.violations
            ]
        )
        status.details.append(_pack(bad_request))
    if error.details:
        status.details.append(
            _pack(error_details_pb2.ErrorInfo(reason=type(error).__name__, metadata=error.details))
        )
    for attachment in getattr(error, "attachments", ()):
        if isinstance(attachment, Message):
            status.details.append(_pack(attachment))
    return rpc_status.to_status(status)


def _pack(message: Message) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


class BillingInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    def __init__(self, service: str, authenticator: Authenticator, *, log_requests: bool = True) -> None:
        self._service = service
        self._auth = authenticator
        self._log_requests = log_requests

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None:
            return None
        method: str = details.method
        metadata = dict(details.invocation_metadata or ())
        if self._auth.is_open(method):
            return handler
        return _wrap(handler, _Guard(self, method, metadata))

    def finish(
        self, method: str, caller: str, started: float, code: grpc.StatusCode, error: str = ""
    ) -> None:
        elapsed = time.perf_counter() - started
        name = method.rsplit("/", 1)[-1]
        RPC_LATENCY.labels(self._service, name, code.name).observe(elapsed)
        RPC_COUNT.labels(self._service, name, code.name).inc()
        if self._log_requests or code not in (grpc.StatusCode.OK,):
            level = (
                logging.INFO if code in (grpc.StatusCode.OK, grpc.StatusCode.NOT_FOUND) else logging.WARNING
            )
            log.log(
                level,
                "rpc",
                extra={
                    "method": method,
                    "code": code.name,
                    "caller": caller,
                    "ms": round(elapsed * 1000, 3),
                    "error": error,
                },
            )


class _Guard:
    """Everything done around one call; shared by the unary and streaming wrappers."""

    def __init__(self, owner: BillingInterceptor, method: str, metadata: dict[str, Any]) -> None:
        self.owner = owner
        self.method = method
        self.metadata = metadata

    def enter(self) -> tuple[float, Any, Any]:
        started = time.perf_counter()
        cid = context.correlation_id.set(
            str(self.metadata.get(CORRELATION_HEADER) or context.new_correlation_id())
        )
        caller_token = context.caller.set("")
        return started, cid, caller_token

    def leave(self, tokens: tuple[float, Any, Any]) -> None:
        context.correlation_id.reset(tokens[1])
        context.caller.reset(tokens[2])

    def authorize(self) -> str:
        caller = self.owner._auth.authorize(self.method, self.metadata.get("authorization"))
        context.caller.set(caller)
        return caller

    async def fail(
        self, grpc_context: grpc.aio.ServicerContext, started: float, error: BaseException
    ) -> None:
        caller = context.caller.get()
        if isinstance(error, BillingError):
            status = rich_status(error)
            self.owner.finish(self.method, caller, started, status.code, error.message)
            await grpc_context.abort(status.code, status.details, status.trailing_metadata)
        if isinstance(error, NotImplementedError):
            self.owner.finish(self.method, caller, started, grpc.StatusCode.UNIMPLEMENTED)
            await grpc_context.abort(grpc.StatusCode.UNIMPLEMENTED, f"{self.method} is not implemented yet")
        if isinstance(error, asyncio.CancelledError):
            self.owner.finish(self.method, caller, started, grpc.StatusCode.CANCELLED)
            raise error
        if isinstance(error, grpc.aio.AbortError | grpc.RpcError):
            self.owner.finish(self.method, caller, started, _as_code(grpc_context.code()))
            raise error
        log.exception("unexpected error in %s", self.method)
        self.owner.finish(self.method, caller, started, grpc.StatusCode.INTERNAL, repr(error))
        await grpc_context.abort(
            grpc.StatusCode.INTERNAL, "internal error; see the service log for this correlation id"
        )


def _as_code(code: Any) -> grpc.StatusCode:
    return code if isinstance(code, grpc.StatusCode) else grpc.StatusCode.UNKNOWN


def _wrap(handler: grpc.RpcMethodHandler, guard: _Guard) -> grpc.RpcMethodHandler:
    if handler.unary_unary:
        inner = handler.unary_unary

        async def unary_unary(request: Any, grpc_context: grpc.aio.ServicerContext) -> Any:
            tokens = guard.enter()
            try:
                guard.authorize()
                response = await inner(request, grpc_context)
                guard.owner.finish(
                    guard.method,
                    context.caller.get(),
                    tokens[0],
                    _as_code(grpc_context.code() or grpc.StatusCode.OK),
                )
                return response
            except BaseException as error:
                await guard.fail(grpc_context, tokens[0], error)
            finally:
                guard.leave(tokens)

        return grpc.unary_unary_rpc_method_handler(
            unary_unary, handler.request_deserializer, handler.response_serializer
        )
    if handler.stream_unary:
        inner_su = handler.stream_unary

        async def stream_unary(requests: AsyncIterator[Any], grpc_context: grpc.aio.ServicerContext) -> Any:
            tokens = guard.enter()
            try:
                guard.authorize()
                response = await inner_su(requests, grpc_context)
                guard.owner.finish(guard.method, context.caller.get(), tokens[0], grpc.StatusCode.OK)
                return response
            except BaseException as error:
                await guard.fail(grpc_context, tokens[0], error)
            finally:
                guard.leave(tokens)

        return grpc.stream_unary_rpc_method_handler(
            stream_unary, handler.request_deserializer, handler.response_serializer
        )
    streaming = handler.unary_stream or handler.stream_stream

    async def streaming_call(request: Any, grpc_context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        tokens = guard.enter()
        try:
            guard.authorize()
            async for item in streaming(request, grpc_context):
                yield item
            guard.owner.finish(guard.method, context.caller.get(), tokens[0], grpc.StatusCode.OK)
        except BaseException as error:
            await guard.fail(grpc_context, tokens[0], error)
        finally:
            guard.leave(tokens)

    factory = (
        grpc.unary_stream_rpc_method_handler
        if handler.unary_stream
        else grpc.stream_stream_rpc_method_handler
    )
    return factory(streaming_call, handler.request_deserializer, handler.response_serializer)
