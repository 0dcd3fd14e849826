"""The validation boundary, tried as a hostile or careless caller would, over every RPC of every service.

The fuzz test sends requests built from each method's descriptor (boundary numbers, NUL and control
characters, 10 KB strings, card numbers, out-of-range times, unknown enum numbers, bytes that are
no message at all) with an operator's token. `BILLING_FUZZ_EXAMPLES` sets the requests per RPC
(a dozen in `make test`; raise it for a longer run).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import pytest
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, Phase, given, settings
from redis.asyncio import Redis

from billing_devtools.testing.plugin import InfraEnv
from tests.integration.boundary import (
    PAN_DIGITS,
    PANS,
    SERVICE_NAMES,
    call,
    call_with_details,
    every_method,
    fingerprint,
    five_services,
    hostile_request,
    request_class,
)

EXAMPLES = int(os.environ.get("BILLING_FUZZ_EXAMPLES", "12"))
NEVER = {grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL}


@dataclass
class Tally:
    codes: Counter[str] = field(default_factory=Counter)
    calls_per_method: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    changes: list[str] = field(default_factory=list)


def _fuzz_method(
    channel: grpc.Channel,
    method: MethodDescriptor,
    token: str,
    state: Callable[[], dict[str, Any]],
    tally: Tally,
) -> None:
    """`EXAMPLES` hostile requests to one method; each refusal must leave the service's state as it was."""

    def refused_and_changed(payload: bytes) -> tuple[grpc.StatusCode, bool]:
        before = state()
        code = call(channel, method, payload, token)
        return code, code != grpc.StatusCode.OK and state() != before

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(payload=hostile_request(method))
    def one(payload: bytes) -> None:
        code, changed = refused_and_changed(payload)
        # Background work (the outbox relay, consumers, the runs an accepted clock move makes due)
        # moves tables too: a change counts only when the same refused request, sent again once
        # the tables are quiet, changes them again.
        if code == grpc.StatusCode.OK or changed:
            _quiet(state)
        if changed:
            code, changed = refused_and_changed(payload)
        tally.codes[code.name] += 1
        tally.calls_per_method[method.full_name] += 1
        if code in NEVER:
            tally.failures.append(f"{method.full_name} {code.name} {payload[:80]!r}")
        if changed:
            tally.changes.append(f"{method.full_name} {code.name} {payload[:80]!r}")

    one()


def _quiet(state: Callable[[], dict[str, Any]], pause: float = 0.5, longest: float = 30.0) -> None:
    """Wait until the service's tables stop moving (or `longest` has passed)."""
    deadline = time.monotonic() + longest
    last = state()
    while time.monotonic() < deadline:
        time.sleep(pause)
        now = state()
        if now == last:
            return
        last = now


@pytest.mark.timeout(1800)
async def test_no_request_to_any_rpc_ends_unknown_or_internal_and_refusals_change_nothing(
    env: InfraEnv, tmp_path: Path
) -> None:
    methods = every_method()
    tally = Tally()
    async with five_services(env, tmp_path) as running:
        admin = await asyncpg.connect(env.infra.postgres_admin_url)
        loop = asyncio.get_running_loop()

        def fuzz() -> None:
            token = env.token("operator")
            for service, method in methods:
                schema = running.schema(service)

                def state(schema: str = schema) -> dict[str, Any]:
                    return asyncio.run_coroutine_threadsafe(fingerprint(admin, schema), loop).result()

                with grpc.insecure_channel(running.processes[service].address) as channel:
                    _fuzz_method(channel, method, token, state, tally)

        try:
            await asyncio.to_thread(fuzz)
        finally:
            await admin.close()
        for service in SERVICE_NAMES:
            async with grpc.aio.insecure_channel(running.processes[service].address) as channel:
                health = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
            assert health.status == health_pb2.HealthCheckResponse.SERVING, service
    print(
        f"\nfuzz: {sum(tally.codes.values())} calls over {len(tally.calls_per_method)} of {len(methods)} "
        f"RPCs; codes {dict(tally.codes.most_common())}"
    )
    assert sorted(tally.calls_per_method) == sorted(method.full_name for _, method in methods)
    assert tally.failures == []
    assert tally.changes == []


def _string_paths(descriptor: Descriptor, depth: int = 0) -> list[list[FieldDescriptor]]:
    """Every string field reachable in a request (maps' keys and values, repeated items included)."""
    paths: list[list[FieldDescriptor]] = []
    for part in descriptor.fields:
        if part.type == FieldDescriptor.TYPE_STRING:
            paths.append([part])
        elif part.message_type is not None and depth < 3:
            if part.message_type.GetOptions().map_entry:
                paths.append([part])
            elif part.message_type.full_name not in (
                "google.protobuf.Timestamp",
                "google.protobuf.Duration",
            ):
                paths += [[part, *rest] for rest in _string_paths(part.message_type, depth + 1)]
    return paths


def _with_text(message: Any, path: list[FieldDescriptor], text: str) -> None:
    head, *rest = path
    if head.message_type is not None and head.message_type.GetOptions().map_entry:
        getattr(message, head.name)[text] = text
        return
    if not rest:
        if head.is_repeated:
            getattr(message, head.name).append(text)
        else:
            setattr(message, head.name, text)
        return
    child = getattr(message, head.name).add() if head.is_repeated else getattr(message, head.name)
    _with_text(child, rest, text)


def _occurrences(text: str) -> int:
    return sum(text.count(digits) for digits in PAN_DIGITS)


@pytest.mark.timeout(1800)
async def test_card_numbers_sent_into_every_string_field_of_every_rpc_are_kept_nowhere(
    env: InfraEnv, tmp_path: Path
) -> None:
    methods = every_method()
    answers: list[str] = []
    sent = 0
    async with five_services(env, tmp_path, log_level="INFO") as running:

        def send() -> int:
            count = 0
            token = env.token("operator")
            for service, method in methods:
                with grpc.insecure_channel(running.processes[service].address) as channel:
                    for path in _string_paths(method.input_type):
                        for pan in PANS:
                            request = request_class(method)()
                            _with_text(request, path, pan)
                            code, text = call_with_details(
                                channel, method, request.SerializeToString(), token
                            )
                            answers.append(f"{method.full_name} {code.name} {text}")
                            count += 1
            return count

        sent = await asyncio.to_thread(send)
        await asyncio.sleep(2)  # let the outbox relay and consumers do whatever they would do
        kept: dict[str, int] = {}
        admin = await asyncpg.connect(env.infra.postgres_admin_url)
        try:
            for service in SERVICE_NAMES:
                schema = running.schema(service)
                dumping = await asyncio.create_subprocess_exec(
                    "pg_dump",
                    "--data-only",
                    f"--schema={schema}",
                    env.infra.postgres_admin_url,
                    stdout=asyncio.subprocess.PIPE,
                )
                dump, _ = await dumping.communicate()
                assert dumping.returncode == 0
                kept[f"tables of {service}"] = _occurrences(dump.decode(errors="replace"))
                payloads = await admin.fetch(f'SELECT payload FROM "{schema}".outbox')
                kept[f"outbox of {service}"] = sum(
                    _occurrences(row["payload"].decode("latin-1")) for row in payloads
                )
        finally:
            await admin.close()
        redis = Redis.from_url(env.infra.redis_url)
        try:
            keys = [key.decode("latin-1") async for key in redis.scan_iter(match=f"{env.run_id}:*")]
        finally:
            await redis.aclose()
        kept["redis keys"] = sum(_occurrences(key) for key in keys)
    for service, log in running.logs.items():
        kept[f"log of {service}"] = _occurrences(log.read_text(errors="replace"))
    kept["error answers"] = sum(_occurrences(answer) for answer in answers)
    print(f"\nPAN test: {sent} calls with a card number over {len(methods)} RPCs; occurrences {kept}")
    assert sent > 0
    assert all(count == 0 for count in kept.values()), kept
