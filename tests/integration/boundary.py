"""What the boundary tests share: the five services as processes with their logs kept, every RPC
read from the registered services' descriptors, hostile requests built from those descriptors, and
a fingerprint of a service's tables and outbox."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import grpc
from google.protobuf import descriptor_pool, message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor
from hypothesis import strategies as st

from billing_common.settings import CommonSettings
from billing_devtools.testing.plugin import InfraEnv
from billing_devtools.testing.processes import RunningProcess, free_port, settings_env, wait_until_serving
from tests.integration.suite import CALLS, SERVICES

SERVICE_NAMES = {
    "gateway-adapter": "billing.gateway.v1.GatewayService",
    "quota": "billing.quota.v1.QuotaService",
    "recurring": "billing.recurring.v1.RecurringService",
    "dunning": "billing.dunning.v1.DunningService",
    "tier": "billing.tier.v1.TierService",
}
TIMESTAMP_MIN = -62_135_596_800
TIMESTAMP_MAX = 253_402_300_799
PANS = [
    "4242424242424242",
    "tok_4242424242424242",
    "x4111111111111111",
    "4242.4242.4242.4242",
    "5555 5555 5555 4444",
    "3782-822463-10005",
    "card:6011111111111117;",
]
# The digits of each PAN, to search for wherever they could have been kept.
PAN_DIGITS = sorted({"".join(c for c in pan if c.isdigit()) for pan in PANS})
HOSTILE_STRINGS = [
    "",
    "x",
    "acme",
    "pro",
    "USD",
    "usd",
    "XXX",
    "a\x00b",
    "\x01\x7f\x1b[31m",
    "line\nbreak",
    "ünïcödé ✓",
    "x" * 10_000,
    "9" * 19,  # a page token we never issued: once parsed into a SQL integer
    "9" * 40,
    "1e999999",
    "NaN",
    "-0.0001",
    "0" * 40,
    "' OR 1=1 --",
    "%s%n{0}",
    *PANS,
]
INT32 = [0, 1, -1, 7, 31, 32, 366, 1000, 2**31 - 1, -(2**31)]
INT64 = [0, 1, -1, 100, 10**12, 10**15, 2**63 - 1, -(2**63)]
UINT = [0, 1, 2**32 - 1]
SECONDS = [
    TIMESTAMP_MIN - 1,
    TIMESTAMP_MIN,
    0,
    1_800_000_000,
    7_258_118_400,
    TIMESTAMP_MAX,
    TIMESTAMP_MAX + 1,
]
NANOS = [0, 1, 999_999_999, 1_000_000_000, -1]
DURATION_SECONDS = [0, 1, -1, 86_400, 10**10, 315_576_000_001, -(2**62)]


@dataclass
class Running:
    env: InfraEnv
    processes: dict[str, RunningProcess] = field(default_factory=dict)
    logs: dict[str, Path] = field(default_factory=dict)

    def schema(self, service: str) -> str:
        return f"{service.replace('-', '_')}_{self.env.run_id}"


@contextlib.asynccontextmanager
async def five_services(env: InfraEnv, log_dir: Path, log_level: str = "WARNING") -> AsyncIterator[Running]:
    """All five services as real processes, each writing its log to a file of `log_dir`."""
    running = Running(env)
    handles: list[Any] = []
    try:
        for name in SERVICES:
            package, prefix, _ = SERVICES[name]
            settings = dataclasses.replace(
                env.settings(CommonSettings, name, log_level=log_level), grpc_port=free_port()
            )
            wiring = {
                f"{prefix}_{callee.upper().replace('-', '_')}_ADDR": running.processes[callee].address
                for callee in CALLS.get(name, [])
            }
            if name == "recurring":
                wiring["RECURRING_TEST_CLOCK"] = "true"
            log = running.logs[name] = log_dir / f"{name}.log"
            handle = log.open("wb")
            handles.append(handle)
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                f"{package}.entrypoints.main",
                env={**os.environ, **settings_env(prefix, settings), **wiring},
                stdout=handle,
                stderr=handle,
            )
            address = f"127.0.0.1:{settings.grpc_port}"
            running.processes[name] = RunningProcess(address, process)
            await wait_until_serving(address)
        yield running
    finally:
        for process in reversed(list(running.processes.values())):
            await process.terminate()
        for handle in handles:
            handle.close()


def methods_of(service: str) -> list[MethodDescriptor]:
    return list(descriptor_pool.Default().FindServiceByName(SERVICE_NAMES[service]).methods)


def every_method() -> list[tuple[str, MethodDescriptor]]:
    """Every RPC of every registered service, read from the descriptors."""
    return [(service, method) for service in SERVICE_NAMES for method in methods_of(service)]


def request_class(method: MethodDescriptor) -> Any:
    return message_factory.GetMessageClass(method.input_type)


def call(channel: grpc.Channel, method: MethodDescriptor, payload: bytes, token: str) -> grpc.StatusCode:
    """Send raw bytes to a method; the status code it answered (OK included)."""
    path = f"/{method.containing_service.full_name}/{method.name}"
    metadata = (("authorization", f"Bearer {token}"),)
    try:
        if method.client_streaming:
            stream = channel.stream_unary(path, request_serializer=None, response_deserializer=None)
            stream(iter([payload]), metadata=metadata, timeout=20)
        else:
            unary = channel.unary_unary(path, request_serializer=None, response_deserializer=None)
            unary(payload, metadata=metadata, timeout=20)
    except grpc.RpcError as error:
        return error.code()  # type: ignore[no-any-return]
    return grpc.StatusCode.OK


def call_with_details(
    channel: grpc.Channel, method: MethodDescriptor, payload: bytes, token: str
) -> tuple[grpc.StatusCode, str]:
    """The code and everything the answer carried back as text (message, trailers)."""
    path = f"/{method.containing_service.full_name}/{method.name}"
    metadata = (("authorization", f"Bearer {token}"),)
    try:
        if method.client_streaming:
            stream = channel.stream_unary(path, request_serializer=None, response_deserializer=None)
            reply = stream(iter([payload]), metadata=metadata, timeout=20)
        else:
            unary = channel.unary_unary(path, request_serializer=None, response_deserializer=None)
            reply = unary(payload, metadata=metadata, timeout=20)
    except grpc.RpcError as error:
        trailers = error.trailing_metadata() or ()  # type: ignore[attr-defined]
        text = " ".join(
            [error.details() or "", *(repr(value) for _, value in trailers)]  # type: ignore[attr-defined]
        )
        return error.code(), text  # type: ignore[attr-defined]
    return grpc.StatusCode.OK, repr(reply)


def _scalar(field: FieldDescriptor) -> st.SearchStrategy[Any]:
    if field.type == FieldDescriptor.TYPE_STRING:
        return st.one_of(st.sampled_from(HOSTILE_STRINGS), st.text(max_size=40))
    if field.type == FieldDescriptor.TYPE_BYTES:
        return st.binary(max_size=64)
    if field.type == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if field.type == FieldDescriptor.TYPE_ENUM:
        defined = [value.number for value in field.enum_type.values]
        return st.sampled_from([*defined, 99, -1, 2**31 - 1])
    if field.type in (FieldDescriptor.TYPE_INT32, FieldDescriptor.TYPE_SINT32, FieldDescriptor.TYPE_SFIXED32):
        return st.one_of(st.sampled_from(INT32), st.integers(-1000, 1000))
    if field.type in (FieldDescriptor.TYPE_UINT32, FieldDescriptor.TYPE_FIXED32):
        return st.sampled_from(UINT)
    if field.type in (FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_FIXED64):
        return st.sampled_from([*UINT, 2**64 - 1])
    if field.type in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        return st.floats(allow_nan=True, allow_infinity=True, width=32)
    return st.one_of(st.sampled_from(INT64), st.integers(-(10**6), 10**6))


def _fill(draw: Callable[[Any], Any], message: Any, descriptor: Descriptor, depth: int) -> None:
    name = descriptor.full_name
    if name == "google.protobuf.Timestamp":
        message.seconds = draw(st.sampled_from(SECONDS))
        message.nanos = draw(st.sampled_from(NANOS))
        return
    if name == "google.protobuf.Duration":
        message.seconds = draw(st.sampled_from(DURATION_SECONDS))
        message.nanos = draw(st.sampled_from(NANOS))
        return
    chosen_oneofs: set[str] = set()
    for part in descriptor.fields:
        oneof = part.containing_oneof
        if oneof is not None and oneof.name in chosen_oneofs:
            continue
        if not draw(st.booleans()):
            continue
        if oneof is not None:
            chosen_oneofs.add(oneof.name)
        if part.message_type is not None and part.message_type.GetOptions().map_entry:
            target = getattr(message, part.name)
            for _ in range(draw(st.integers(0, 2))):
                key = draw(_scalar(part.message_type.fields_by_name["key"]))
                value_field = part.message_type.fields_by_name["value"]
                if value_field.message_type is None:
                    target[key] = draw(_scalar(value_field))
            continue
        if part.message_type is not None:
            if depth >= 3:
                continue
            if part.is_repeated:
                for _ in range(draw(st.integers(0, 3))):
                    _fill(draw, getattr(message, part.name).add(), part.message_type, depth + 1)
            else:
                child = getattr(message, part.name)
                child.SetInParent()
                _fill(draw, child, part.message_type, depth + 1)
            continue
        if part.is_repeated:
            getattr(message, part.name).extend(draw(st.lists(_scalar(part), max_size=3)))
        else:
            setattr(message, part.name, draw(_scalar(part)))


@st.composite
def hostile_request(draw: Callable[[Any], Any], method: MethodDescriptor) -> bytes:
    """A request of the method's type with boundary values, hostile text, out-of-range times,
    unknown enum numbers; or, now and then, bytes that are not such a message at all."""
    if draw(st.integers(0, 9)) == 0:
        return bytes(draw(st.binary(min_size=1, max_size=64)))
    message = request_class(method)()
    _fill(draw, message, method.input_type, 0)
    return bytes(message.SerializeToString())


async def fingerprint(conn: asyncpg.Connection, schema: str) -> dict[str, Any]:
    """Row counts of every table of the schema, and the outbox's events and payloads."""
    tables = await conn.fetch(
        "SELECT table_name FROM information_schema.tables "
        "WHERE table_schema = $1 AND table_type = 'BASE TABLE'",
        schema,
    )
    parts = [
        f"SELECT '{row['table_name']}' AS name, count(*)::text AS value "
        f'FROM "{schema}"."{row["table_name"]}"'
        for row in tables
        if row["table_name"] != "schema_migrations"
    ]
    parts.append(
        "SELECT 'outbox payloads', "
        "coalesce(md5(string_agg(event_id::text || md5(payload), ',' ORDER BY id)), '') "
        f'FROM "{schema}".outbox'
    )
    return {row["name"]: row["value"] for row in await conn.fetch(" UNION ALL ".join(parts))}
