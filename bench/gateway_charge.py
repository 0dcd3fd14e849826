"""gateway-adapter: Charge and ChargeBatch against the sandbox gateway with no latency, as ratios
to the echo baseline measured in the same round, with the gateway-adapter pod's CPU per charge;
then paced: ChargeBatch under a 200/s limit on a gateway answering in 50 ms, the charges per second
achieved as a fraction of the limit and the busiest rolling second on the gateway's clock (its own
ledger of the charges that reached it), which must never be above the limit.

Every charge is a new idempotency key: its key is claimed, the sandbox is called (it writes its own
ledger row, in the same process) and the outcome is recorded with its payment.succeeded event,
which the pod's relay publishes. Concurrent Charge calls share their claim and record transactions;
a ChargeBatch claims and records all of its charges in one transaction each. Several rounds, so
the spread shows how steady the figures are on a shared machine.
"""

from __future__ import annotations

import os
import statistics
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

from bench.echo_baseline import echo_caller
from bench.harness import (
    Figures,
    bench_env,
    busiest_second,
    closed_loop,
    cpu_seconds,
    outbox_drained,
    server_process,
)
from billing.common.v1 import common_pb2
from billing.gateway.v1 import gateway_pb2 as pb
from billing.gateway.v1 import gateway_pb2_grpc
from billing_common.grpc_client import open_channel
from billing_devtools.testing.processes import free_port
from gateway_adapter.entrypoints.main import MIGRATIONS, build
from gateway_adapter.settings import GatewaySettings

CONCURRENCY = 16
BATCH = 100
BATCH_CONCURRENCY = 4
SECONDS = 4.0
ROUNDS = 3
PACED_LIMIT = 200
PACED_LATENCY = timedelta(milliseconds=50)
PACED_SECONDS = float(os.environ.get("BENCH_GATEWAY_PACED_SECONDS", "15"))


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


async def _measured(
    name: str,
    call: Callable[[int], Awaitable[Any]],
    concurrency: int,
    pid: int,
    drained: Callable[[], Awaitable[None]],
    per_call: int = 1,
) -> tuple[Figures, float]:
    """The figures of a closed loop, started once the events of the last one are published, and
    the pod's CPU milliseconds per charge during it."""
    await drained()
    before = cpu_seconds(pid)
    figures = await closed_loop(name, call, concurrency, SECONDS)
    return figures, (cpu_seconds(pid) - before) * 1000 / (figures.calls * per_call)


def _spread(values: list[float]) -> str:
    return f"median {statistics.median(values):.2f} (min {min(values):.2f}, max {max(values):.2f})"


async def paced() -> None:
    """ChargeBatch calls back to back under the limit: achieved/limit and the busiest second."""
    ratios: list[float] = []
    busiest: list[int] = []
    async with bench_env() as env:
        settings = env.settings(
            GatewaySettings,
            "gateway-adapter",
            webhook_port=free_port(),
            rate_limits={"sandbox-card": PACED_LIMIT},
            sandbox_latency=PACED_LATENCY,
        )
        with server_process("bench.gateway_charge:gateway_factory", settings, str(MIGRATIONS)) as served:
            async with open_channel(f"127.0.0.1:{served.port}", env.token("recurring")) as channel:
                stub = gateway_pb2_grpc.GatewayServiceStub(channel)
                for round_number in range(ROUNDS):
                    prefix = f"bench-paced-{round_number}-"

                    async def charge_batch(n: int, prefix: str = prefix) -> None:
                        keys = (f"{prefix}{n}-{i}" for i in range(BATCH))
                        reply = await stub.ChargeBatch(
                            pb.ChargeBatchRequest(charges=[charge_request(key) for key in keys])
                        )
                        assert all(
                            r.payment.status == common_pb2.PAYMENT_STATUS_SUCCEEDED for r in reply.results
                        )

                    load = os.getloadavg()[0]
                    figures = await closed_loop(
                        f"gateway ChargeBatch x{BATCH} paced r{round_number}",
                        charge_batch,
                        BATCH_CONCURRENCY,
                        PACED_SECONDS,
                    )
                    ratios.append(figures.rps * BATCH / PACED_LIMIT)
                    busiest.append(await busiest_second(env, prefix))
                    print(
                        f"{figures.line()}  {figures.rps * BATCH:6.1f} charges/s = {ratios[-1]:.3f} of the "
                        f"{PACED_LIMIT}/s limit ({PACED_LATENCY.total_seconds() * 1000:.0f} ms gateway); "
                        f"busiest 1 s at the gateway {busiest[-1]}/{PACED_LIMIT}; load average {load:.2f}"
                    )
    print(
        f"paced ChargeBatch fraction of the {PACED_LIMIT}/s limit {_spread(ratios)}; "
        f"busiest second max {max(busiest)}/{PACED_LIMIT}"
    )


async def unpaced() -> None:
    charge_ratios: list[float] = []
    charge_cpu: list[float] = []
    batch_ratios: list[float] = []
    batch_cpu: list[float] = []
    async with bench_env() as env, echo_caller(env) as echo_call:
        settings = env.settings(GatewaySettings, "gateway-adapter", webhook_port=free_port())
        with server_process("bench.gateway_charge:gateway_factory", settings, str(MIGRATIONS)) as served:
            async with open_channel(f"127.0.0.1:{served.port}", env.token("recurring")) as channel:
                stub = gateway_pb2_grpc.GatewayServiceStub(channel)

                async def drained() -> None:
                    await outbox_drained(env, settings.schema)

                def single_of(round_number: int) -> Callable[[int], Awaitable[None]]:
                    # A key of its own per round: the loop's call numbers start again at 0 each round,
                    # and a key charged before is a replay, not a charge.
                    async def charge(n: int) -> None:
                        reply = await stub.Charge(charge_request(f"bench-{round_number}-{n}"))
                        assert reply.payment.status == common_pb2.PAYMENT_STATUS_SUCCEEDED
                        assert not reply.replayed

                    return charge

                def batch_of(round_number: int) -> Callable[[int], Awaitable[None]]:
                    async def charge_batch(n: int) -> None:
                        keys = (f"bench-batch-{round_number}-{n}-{i}" for i in range(BATCH))
                        reply = await stub.ChargeBatch(
                            pb.ChargeBatchRequest(charges=[charge_request(key) for key in keys])
                        )
                        assert all(
                            r.payment.status == common_pb2.PAYMENT_STATUS_SUCCEEDED for r in reply.results
                        )

                    return charge_batch

                await single_of(-1)(0)
                for round_number in range(ROUNDS):
                    await drained()
                    echo = await closed_loop("echo (service host)", echo_call, CONCURRENCY, SECONDS)
                    single, cpu = await _measured(
                        f"gateway Charge (sandbox, 0 ms) r{round_number}",
                        single_of(round_number),
                        CONCURRENCY,
                        served.pid,
                        drained,
                    )
                    batched, batch_cpu_ms = await _measured(
                        f"gateway ChargeBatch x{BATCH} r{round_number}",
                        batch_of(round_number),
                        BATCH_CONCURRENCY,
                        served.pid,
                        drained,
                        BATCH,
                    )
                    charge_ratios.append(single.rps / echo.rps)
                    charge_cpu.append(cpu)
                    batch_ratios.append(batched.rps * BATCH / echo.rps)
                    batch_cpu.append(batch_cpu_ms)
                    print(echo.line())
                    print(f"{single.line(echo)}  CPU {cpu:.2f} ms/charge")
                    print(
                        f"{batched.line()}  {batched.rps * BATCH:7.0f} charges/s  ratio to echo "
                        f"{batch_ratios[-1]:5.2f}  CPU {batch_cpu_ms:.2f} ms/charge"
                    )

                async def replay(n: int) -> None:
                    reply = await stub.Charge(charge_request(f"bench-0-{n % 100}"))
                    assert reply.replayed

                await drained()
                replays = await closed_loop("gateway Charge replay (stored)", replay, CONCURRENCY, SECONDS)
                print(replays.line(echo))
    print(f"Charge ratio to echo {_spread(charge_ratios)}; pod CPU per charge ms {_spread(charge_cpu)}")
    print(
        f"ChargeBatch x{BATCH} charges/s ratio to echo {_spread(batch_ratios)}; "
        f"CPU per charge ms {_spread(batch_cpu)}"
    )


async def main() -> None:
    await unpaced()
    await paced()
