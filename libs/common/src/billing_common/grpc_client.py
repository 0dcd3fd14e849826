"""Outgoing gRPC channels: bearer token, correlation id and trace context on every call."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import grpc

from billing_common import context, telemetry
from billing_common.grpc_server import CORRELATION_HEADER

# Transient failures of another service are retried by the channel itself, a few times.
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
            }
        ],
    }
)


class _CallMetadata:
    """Stamps the bearer token and correlation id on a call's metadata."""

    def __init__(self, token: str) -> None:
        self._authorization = f"Bearer {token}" if token else ""

    def _details(self, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        metadata = grpc.aio.Metadata(*(details.metadata or ()))
        if self._authorization:
            metadata["authorization"] = self._authorization
        metadata[CORRELATION_HEADER] = context.current_correlation_id()
        return grpc.aio.ClientCallDetails(
            details.method, details.timeout, metadata, details.credentials, details.wait_for_ready
        )


# grpc.aio files an interceptor under the first call kind it implements only, so each kind needs
# its own object; one class implementing all four would leave streaming calls unauthenticated.
class _UnaryUnary(_CallMetadata, grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(
        self, continuation: Callable[..., Any], details: Any, request: Any
    ) -> Any:
        return await continuation(self._details(details), request)


class _UnaryStream(_CallMetadata, grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(
        self, continuation: Callable[..., Any], details: Any, request: Any
    ) -> Any:
        return await continuation(self._details(details), request)


class _StreamUnary(_CallMetadata, grpc.aio.StreamUnaryClientInterceptor):
    async def intercept_stream_unary(
        self, continuation: Callable[..., Any], details: Any, requests: Any
    ) -> Any:
        return await continuation(self._details(details), requests)


class _StreamStream(_CallMetadata, grpc.aio.StreamStreamClientInterceptor):
    async def intercept_stream_stream(
        self, continuation: Callable[..., Any], details: Any, requests: Any
    ) -> Any:
        return await continuation(self._details(details), requests)


def open_channel(target: str, token: str = "", *, root_certificates: bytes | None = None) -> grpc.aio.Channel:
    """A channel to another billing service; TLS when root certificates are given."""
    stamps = [kind(token) for kind in (_UnaryUnary, _UnaryStream, _StreamUnary, _StreamStream)]
    interceptors: list[Any] = [*stamps, *telemetry.client_interceptors()]
    options = [("grpc.service_config", _SERVICE_CONFIG), ("grpc.enable_retries", 1)]
    if root_certificates is not None:
        credentials = grpc.ssl_channel_credentials(root_certificates=root_certificates)
        return grpc.aio.secure_channel(target, credentials, options=options, interceptors=interceptors)
    return grpc.aio.insecure_channel(target, options=options, interceptors=interceptors)
