"""All five services start as real processes, answer health and reflection, and refuse anonymous calls."""

import asyncio

import grpc
import pytest
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from billing_common.settings import CommonSettings
from billing_devtools.testing.plugin import InfraEnv
from billing_devtools.testing.processes import start_process

SERVICES = [
    ("gateway_adapter", "GATEWAY", "gateway-adapter", "billing.gateway.v1.GatewayService", "GetPayment"),
    ("quota", "QUOTA", "quota", "billing.quota.v1.QuotaService", "ListPlans"),
    ("recurring", "RECURRING", "recurring", "billing.recurring.v1.RecurringService", "ListRuns"),
    ("dunning", "DUNNING", "dunning", "billing.dunning.v1.DunningService", "ListCases"),
    ("tier", "TIER", "tier", "billing.tier.v1.TierService", "ListScans"),
]


async def _listed_services(address: str) -> list[str]:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        replies = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
        return [s.name async for reply in replies for s in reply.list_services_response.service]


@pytest.mark.timeout(180)
async def test_every_service_serves_health_reflection_and_refuses_anonymous_calls(env: InfraEnv) -> None:
    started = await asyncio.gather(
        *(
            start_process(package, prefix, env.settings(CommonSettings, name))
            for package, prefix, name, _, _ in SERVICES
        )
    )
    try:
        for running, (_, _, _, service, method) in zip(started, SERVICES, strict=True):
            assert service in await _listed_services(running.address)
            async with grpc.aio.insecure_channel(running.address) as channel:
                call = channel.unary_unary(f"/{service}/{method}", lambda _: b"", lambda data: data)
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await call(b"")
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    finally:
        await asyncio.gather(*(running.terminate() for running in started))
