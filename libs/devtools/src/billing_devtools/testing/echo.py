"""A trivial unary service served by the real host: the baseline for benchmarks and host tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import grpc

from billing_common import context as call_context
from billing_common.errors import InvalidArgument
from billing_common.service import Lifespan, Registration, Resources, ServiceParts

SERVICE = "billing.testing.Echo"
METHOD = f"/{SERVICE}/Echo"


def _identity(data: bytes) -> bytes:
    return data


async def _echo(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
    if request == b"invalid":
        raise InvalidArgument.of("payload", "must not be the word 'invalid'")
    if request == b"crash":  # a fault of the server's own: INTERNAL
        raise RuntimeError("echo was asked to crash")
    if request == b"whoami":  # who the server saw calling, and under which correlation id
        return f"{call_context.caller.get()} {call_context.correlation_id.get()}".encode()
    if request == b"peer":  # the client's end of the connection this call came on
        return context.peer().encode()
    return request


def _add(_servicer: Any, server: grpc.aio.Server) -> None:
    handler = grpc.unary_unary_rpc_method_handler(
        _echo, request_deserializer=_identity, response_serializer=_identity
    )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, {"Echo": handler}),))


def echo_registration(callers: set[str]) -> Registration:
    return Registration(_add, None, SERVICE, {"Echo": callers})


def echo_lifespan(callers: set[str]) -> Lifespan:
    @asynccontextmanager
    async def lifespan(_resources: Resources) -> AsyncIterator[ServiceParts]:
        yield ServiceParts([echo_registration(callers)])

    return lifespan


def echo_stub(channel: grpc.aio.Channel) -> Any:
    return channel.unary_unary(METHOD, request_serializer=_identity, response_deserializer=_identity)


def main() -> None:
    """`python -m billing_devtools.testing.echo`: the echo service as a real process (ECHO_* settings)."""
    from pathlib import Path

    from billing_common.service import run_service
    from billing_common.settings import CommonSettings

    run_service(
        "ECHO",
        CommonSettings,
        lambda _settings: echo_lifespan({"bench"}),
        Path(__file__).parent / "no-migrations",
    )


if __name__ == "__main__":
    main()
