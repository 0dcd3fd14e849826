"""Each gateway's own rate limit, kept by every pod together right before the gateway is called."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import grpc
import pytest

from billing.common.v1 import common_pb2 as c
from billing.gateway.v1 import gateway_pb2 as pb
from billing_devtools.testing.plugin import InfraEnv

from .conftest import Gateway, busiest_second, gateway_process

pytestmark = pytest.mark.integration

LIMIT = 20


async def charge_until_sent(pod: Gateway, key: str) -> pb.ChargeResponse:
    """A caller that honours back-pressure: the same key again a moment later, as recurring does."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 60
    while True:
        try:
            return await pod.charge(key)
        except grpc.aio.AioRpcError as error:
            if error.code() is not grpc.StatusCode.UNAVAILABLE or loop.time() > deadline:
                raise
            await asyncio.sleep(0.1)


async def test_two_pods_never_send_a_gateway_more_than_its_limit_in_any_second(env: InfraEnv) -> None:
    limits = {"sandbox-card": LIMIT}
    # 60 charges at 20/s take 3 s: with a 0.3 s wait most callers are told to come back, and do.
    async with (
        gateway_process(env, rate_limits=limits, interactive_max_wait=timedelta(milliseconds=300)) as one,
        gateway_process(env, rate_limits=limits, interactive_max_wait=timedelta(milliseconds=300)) as two,
    ):

        async def client(pod: Gateway, name: str) -> list[pb.ChargeResponse]:
            return await asyncio.gather(*(charge_until_sent(pod, f"{name}-{n}") for n in range(30)))

        replies = [
            reply for batch in await asyncio.gather(client(one, "a"), client(two, "b")) for reply in batch
        ]

        assert len(replies) == 60
        assert all(r.payment.status == c.PAYMENT_STATUS_SUCCEEDED and not r.replayed for r in replies)
        per_key = await one.pool.fetch(
            "SELECT idempotency_key, count(*) AS n FROM sandbox_charges GROUP BY 1"
        )
        assert len(per_key) == 60 and {row["n"] for row in per_key} == {1}
        assert await busiest_second(one) <= LIMIT
