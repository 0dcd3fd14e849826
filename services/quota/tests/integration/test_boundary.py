"""The host's validation boundary as quota's callers meet it: undecodable bytes, bad fields, long input."""

import logging

import grpc
import pytest

from billing.quota.v1 import quota_pb2 as pb
from billing_devtools.testing.plugin import InfraEnv
from billing_devtools.testing.rpc import field_violations

from .conftest import quota_service

CHECK = "/billing.quota.v1.QuotaService/CheckQuota"


async def test_undecodable_bytes_are_refused_after_authentication_as_invalid_argument_logged_once(
    env: InfraEnv, caplog: pytest.LogCaptureFixture
) -> None:
    async with quota_service(env) as quota, grpc.aio.insecure_channel(f"127.0.0.1:{quota.port}") as channel:
        raw = channel.unary_unary(CHECK, request_serializer=None, response_deserializer=None)
        with pytest.raises(grpc.aio.AioRpcError) as anonymous:
            await raw(b"\xff\xff\xff\xff")
        assert anonymous.value.code() == grpc.StatusCode.UNAUTHENTICATED

        caplog.clear()
        with caplog.at_level(logging.WARNING), pytest.raises(grpc.aio.AioRpcError) as garbage:
            await raw(b"\xff\xff\xff\xff", metadata=(("authorization", f"Bearer {env.token('operator')}"),))

    assert garbage.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert list(field_violations(garbage.value)) == ["request"]
    # The call's own log lines: the service's shutdown may add others (a broker channel closed).
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING and r.name == "billing.rpc"]
    assert len(warnings) == 1
    assert warnings[0].exc_info is None and warnings[0].levelno == logging.WARNING


async def test_a_10_kb_plan_code_is_refused_without_being_echoed(env: InfraEnv) -> None:
    async with quota_service(env) as quota:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await quota.caller.GetPlan(pb.GetPlanRequest(code="p" * 10_000))

    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_violations(refused.value) == {"code": "must be at most 64 characters"}
    trailers = b"".join(
        value if isinstance(value, bytes) else value.encode()
        for _, value in (refused.value.trailing_metadata() or ())
    )
    assert b"ppppp" not in trailers and "ppppp" not in (refused.value.details() or "")


async def test_empty_batches_and_unknown_ids_are_invalid_argument_not_ok_or_not_found(env: InfraEnv) -> None:
    async with quota_service(env) as quota:
        with pytest.raises(grpc.aio.AioRpcError) as empty:
            await quota.caller.RecordUsageBatch(pb.RecordUsageBatchRequest())
        with pytest.raises(grpc.aio.AioRpcError) as unnamed:
            await quota.caller.GetEntitlements(pb.GetEntitlementsRequest())

    assert field_violations(empty.value) == {"events": "must contain at least 1 item(s)"}
    assert field_violations(unnamed.value) == {"tenant_id": "is required"}
