"""Outgoing gRPC channels: bearer token, correlation id and trace context on every call."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Generator
from typing import Any

import grpc
from prometheus_client import Counter, Histogram

from billing_common import context, telemetry
from billing_common.grpc_server import CORRELATION_HEADER

# Calls that must never be sent twice by the channel: UNAVAILABLE may come after the server applied
# the call (a connection closed at its maximum age while the call ran), and the test clock's moves
# are not idempotent (a re-sent AdvanceClock moved the suite days further than asked).
NOT_RETRIED = (
    ("billing.recurring.v1.RecurringService", "AdvanceClock"),
    ("billing.recurring.v1.RecurringService", "SetClock"),
)
# Transient failures of another service are retried by the channel itself, a few times; a more
# specific name wins over the default, so the calls above have no retry policy.
_SERVICE_CONFIG = json.dumps(
    {
        # Spread calls over every pod behind a (headless) Service, not the first one found.
        "loadBalancingConfig": [{"round_robin": {}}],
        "methodConfig": [
            {
                "name": [{}],
                "retryPolicy": {
                    "maxAttempts": 4,
                    "initialBackoff": "0.1s",
                    "maxBackoff": "2s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            },
            {"name": [{"service": service, "method": method} for service, method in NOT_RETRIED]},
        ],
    }
)


_INITIAL_RECONNECT_BACKOFF_MS = 500
MAX_RECONNECT_BACKOFF_MS = 2_000

STAMPED = frozenset({"authorization", CORRELATION_HEADER, "traceparent", "tracestate"})
# A bearer token, or where to get the current one (a token file that is replaced when renewed).
Token = str | Callable[[], str]

CLIENT_LATENCY = Histogram(
    "grpc_client_handling_seconds",
    "Outgoing RPCs: time until the answer, by called service, method and status code",
    ["service", "method", "code"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
CLIENT_COUNT = Counter(
    "grpc_client_handled_total",
    "Outgoing RPCs by called service, method and status code",
    ["service", "method", "code"],
)


class _Stamped:
    """A method of the channel whose calls carry the bearer token, the correlation id and the trace.

    Stamping here rather than in a client interceptor: grpc.aio runs intercepted calls through an
    extra task and call object per call (the README gives the measured cost). Unary calls are timed and
    counted, and traced when the caller's trace is sampled.
    """

    def __init__(self, call: Any, authorization: Callable[[], str], method: str, unary: bool) -> None:
        self._call = call
        self._authorization = authorization
        self._method = method
        self._unary = unary
        self._service, _, self._name = method.lstrip("/").rpartition("/")
        # The labelled metrics of each status code, looked up once: `labels()` costs more than using them.
        self._metrics: dict[grpc.StatusCode, tuple[Any, Any]] = {}

    def __call__(self, *args: Any, metadata: Any = None, **kwargs: Any) -> Any:
        stamped = [(key, value) for key, value in metadata or () if key not in STAMPED]
        authorization = self._authorization()
        if authorization:
            stamped.append(("authorization", authorization))
        stamped.append((CORRELATION_HEADER, context.current_correlation_id()))
        outgoing = None
        if telemetry.enabled:
            outgoing, parent, state = telemetry.client_span(self._method)
            if parent:
                stamped.append(("traceparent", parent))
            if state:
                stamped.append(("tracestate", state))
        call = self._call(*args, metadata=stamped, **kwargs)
        return _ObservedCall(call, self, outgoing) if self._unary else call

    def finished(self, code: grpc.StatusCode, started: float) -> None:
        metrics = self._metrics.get(code)
        if metrics is None:
            metrics = self._metrics[code] = (
                CLIENT_LATENCY.labels(self._service, self._name, code.name),
                CLIENT_COUNT.labels(self._service, self._name, code.name),
            )
        metrics[0].observe(time.perf_counter() - started)
        metrics[1].inc()


class _ObservedCall:
    """A unary call as the caller awaits it, timed and counted (and its client span ended) when the
    answer or the error arrives; anything else is the call's own."""

    __slots__ = ("_call", "_method", "_span", "_started")

    def __init__(self, call: Any, method: _Stamped, outgoing: Any) -> None:
        self._call = call
        self._method = method
        self._span = outgoing
        self._started = time.perf_counter()

    def __await__(self) -> Generator[Any, None, Any]:
        try:
            response = yield from self._call.__await__()
        except grpc.aio.AioRpcError as error:
            self._done(error.code(), error.details() or "")
            raise
        except asyncio.CancelledError:
            self._done(grpc.StatusCode.CANCELLED)
            raise
        self._done(grpc.StatusCode.OK)
        return response

    def _done(self, code: grpc.StatusCode, details: str = "") -> None:
        self._method.finished(code, self._started)
        if self._span is not None:
            telemetry.end_client_span(self._span, code.name, code.value[0], details)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._call, name)


class _StampingChannel(grpc.aio.Channel):
    """A grpc.aio channel whose every method stamps its calls (see `_Stamped`)."""

    def __init__(self, channel: grpc.aio.Channel, token: Token) -> None:
        self._channel = channel
        self._authorization = _authorization(token)

    def unary_unary(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return _Stamped(self._channel.unary_unary(method, *args, **kwargs), self._authorization, method, True)

    def unary_stream(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return _Stamped(
            self._channel.unary_stream(method, *args, **kwargs), self._authorization, method, False
        )

    def stream_unary(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return _Stamped(
            self._channel.stream_unary(method, *args, **kwargs), self._authorization, method, False
        )

    def stream_stream(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return _Stamped(
            self._channel.stream_stream(method, *args, **kwargs), self._authorization, method, False
        )

    async def __aenter__(self) -> _StampingChannel:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._channel.close()

    async def close(self, grace: float | None = None) -> None:
        await self._channel.close(grace)

    def get_state(self, try_to_connect: bool = False) -> grpc.ChannelConnectivity:
        return self._channel.get_state(try_to_connect)

    async def wait_for_state_change(self, last_observed_state: grpc.ChannelConnectivity) -> None:
        await self._channel.wait_for_state_change(last_observed_state)

    async def channel_ready(self) -> None:
        await self._channel.channel_ready()


def _authorization(token: Token) -> Callable[[], str]:
    if isinstance(token, str):
        header = f"Bearer {token}" if token else ""
        return lambda: header
    current = ""
    header = ""

    def renewed() -> str:
        nonlocal current, header
        latest = token()
        if latest is not current:
            current, header = latest, f"Bearer {latest}" if latest else ""
        return header

    return renewed


def open_channel(
    target: str, token: Token = "", *, root_certificates: bytes | None = None
) -> grpc.aio.Channel:
    """A channel to another billing service; TLS when root certificates are given."""
    options = [
        ("grpc.service_config", _SERVICE_CONFIG),
        ("grpc.enable_retries", 1),
        # Connections are the channel's own: a new channel never inherits another channel's refused
        # connection (and its reconnect back-off) to an address that a new server now listens on.
        ("grpc.use_local_subchannel_pool", 1),
        # A restarted pod is reached within seconds: gRPC's default reconnect back-off grows to two
        # minutes, and calls made meanwhile fail at once (or, waiting for ready, wait out the back-off).
        ("grpc.initial_reconnect_backoff_ms", _INITIAL_RECONNECT_BACKOFF_MS),
        ("grpc.max_reconnect_backoff_ms", MAX_RECONNECT_BACKOFF_MS),
    ]
    if root_certificates is not None:
        credentials = grpc.ssl_channel_credentials(root_certificates=root_certificates)
        channel = grpc.aio.secure_channel(target, credentials, options=options)
    else:
        channel = grpc.aio.insecure_channel(target, options=options)
    return _StampingChannel(channel, token)
