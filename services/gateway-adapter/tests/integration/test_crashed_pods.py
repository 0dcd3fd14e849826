"""A pod killed mid-charge: its charge is no one's outcome until the janitor has asked the gateway,
and then the same key runs it once; never a failure handed to the caller as the customer's."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import grpc
import pytest

from billing.common.v1 import common_pb2 as c
from billing.gateway.v1 import gateway_pb2 as pb
from billing.gateway.v1 import gateway_pb2_grpc
from billing_common.grpc_client import open_channel
from billing_devtools.testing.plugin import EventCollector, InfraEnv, eventually
from billing_devtools.testing.processes import free_port, start_process
from gateway_adapter.settings import GatewaySettings

from .conftest import Gateway, gateway_service

pytestmark = pytest.mark.integration
KEY = "inv-cut:1"


async def cut_off_charge(env: InfraEnv, gateway: Gateway) -> None:
    """A pod that takes the charge and dies while the gateway call is on its way (before the
    gateway has it): its payment row stays PROCESSING."""
    settings = env.settings(
        GatewaySettings,
        "gateway-adapter",
        webhook_port=free_port(),
        sandbox_latency=timedelta(seconds=5),
        processing_timeout=timedelta(seconds=3),
    )
    doomed = await start_process("gateway_adapter", "GATEWAY", settings)
    try:
        async with open_channel(doomed.address, env.token("recurring")) as channel:
            stub = gateway_pb2_grpc.GatewayServiceStub(channel)
            call = asyncio.ensure_future(
                stub.Charge(
                    pb.ChargeRequest(
                        merchant_id="merchant-a",
                        payment_method=c.PaymentMethod(
                            type=c.PAYMENT_METHOD_TYPE_CARD, gateway_token="tok_success"
                        ),
                        amount=c.Money(amount_minor=1999, currency="USD"),
                        idempotency_key=KEY,
                        caller_reference="inv-1",
                    )
                )
            )

            async def processing() -> bool:
                status = await gateway.pool.fetchval(
                    "SELECT status FROM payments WHERE idempotency_key = $1", KEY
                )
                return bool(status == "PROCESSING")

            await eventually(processing, timeout=20, interval=0.02)
            await doomed.kill()
            with pytest.raises(grpc.aio.AioRpcError) as lost:
                await call
            assert lost.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        await doomed.kill()


async def test_a_replay_of_a_charge_cut_off_by_a_dead_pod_is_unavailable_until_the_janitor_knows(
    env: InfraEnv,
) -> None:
    async with (
        gateway_service(env, in_flight_wait=timedelta(milliseconds=200)) as survivor,
        EventCollector(env.infra.amqp_url, env.exchange, ["payment.*"]) as events,
    ):
        await cut_off_charge(env, survivor)

        with pytest.raises(grpc.aio.AioRpcError) as in_progress:
            await survivor.charge(KEY)
        assert in_progress.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "same key" in (in_progress.value.details() or "")

        async def charged() -> pb.ChargeResponse | None:
            try:
                reply: pb.ChargeResponse = await survivor.charge(KEY)
            except grpc.aio.AioRpcError as error:
                if error.code() != grpc.StatusCode.UNAVAILABLE:
                    raise
                return None
            return reply

        reply = await eventually(charged, timeout=30, interval=0.2)
        assert reply.payment.status == c.PAYMENT_STATUS_SUCCEEDED
        assert await survivor.gateway_calls(KEY) == 1
        [reconciled] = await events.wait_for("payment.reconciled")
        assert reconciled.payment.normalized_code == "not_received_by_gateway"
        assert reconciled.previous_status == c.PAYMENT_STATUS_UNKNOWN


async def test_a_replay_waiting_on_a_charge_the_gateway_never_received_runs_it(env: InfraEnv) -> None:
    async with gateway_service(env, in_flight_wait=timedelta(seconds=20)) as survivor:
        await cut_off_charge(env, survivor)

        # Waits while the janitor asks the gateway, learns it never had the charge, and runs it.
        reply = await survivor.charge(KEY)

        assert reply.payment.status == c.PAYMENT_STATUS_SUCCEEDED and not reply.replayed
        assert await survivor.gateway_calls(KEY) == 1
