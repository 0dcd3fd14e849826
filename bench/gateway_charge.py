"""gateway-adapter: Charge against the sandbox gateway with no latency, at 16 concurrent calls, as
a ratio to the echo baseline of the same run, with p50/p99. Every call is a new idempotency key, so
each one claims its key, calls the sandbox (which writes its own ledger row) and records the
outcome with its payment.succeeded event in one transaction.
"""

from __future__ import annotations

from typing import Any

from bench.echo_baseline import measure_echo
from bench.harness import bench_env, closed_loop, server_process
from billing.common.v1 import common_pb2
from billing.gateway.v1 import gateway_pb2 as pb
from billing.gateway.v1 import gateway_pb2_grpc
from billing_common.grpc_client import open_channel
from billing_common.testing.processes import free_port
from gateway_adapter.entrypoints.main import MIGRATIONS, build
from gateway_adapter.settings import GatewaySettings

CONCURRENCY = 16
SECONDS = 4.0


def gateway_factory(settings: GatewaySettings) -> Any:
    return build(settings)


def charge_request(key: str) -> pb.ChargeRequest:
    return pb.ChargeRequest(
        merchant_id="bench-merchant",
        payment_method=common_pb2.PaymentMethod(
            type=common_pb2.PAYMENT_METHOD_TYPE_CARD, gateway_token="tok_success"
        ),
        amount=common_pb2.Money(amount_minor=1999, currency="USD"),
        idempotency_key=key,
        caller_reference=key,
    )


async def main() -> None:
    async with bench_env() as env:
        echo = (await measure_echo(env, SECONDS))[CONCURRENCY]
        settings = env.settings(GatewaySettings, "gateway-adapter", webhook_port=free_port())
        with server_process("bench.gateway_charge:gateway_factory", settings, str(MIGRATIONS)) as port:
            async with open_channel(f"127.0.0.1:{port}", env.token("recurring")) as channel:
                stub = gateway_pb2_grpc.GatewayServiceStub(channel)

                async def charge(n: int) -> None:
                    reply = await stub.Charge(charge_request(f"bench-{n}"))
                    assert reply.payment.status == common_pb2.PAYMENT_STATUS_SUCCEEDED

                await charge(-1)
                figures = await closed_loop("gateway Charge (sandbox, 0 ms)", charge, CONCURRENCY, SECONDS)

                async def replay(n: int) -> None:
                    reply = await stub.Charge(charge_request(f"bench-{n % 100}"))
                    assert reply.replayed

                replays = await closed_loop("gateway Charge replay (stored)", replay, CONCURRENCY, SECONDS)
    print(echo.line())
    print(figures.line(echo))
    print(replays.line(echo))
    print(
        f"Charge ratio to echo {figures.rps / echo.rps:.2f}; p50 {figures.p50_ms:.2f} ms, "
        f"p99 {figures.p99_ms:.2f} ms; replays {replays.rps / echo.rps:.2f} of echo"
    )
