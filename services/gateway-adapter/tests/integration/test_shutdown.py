"""SIGTERM, as Kubernetes sends it when it scales a pod in: charges in flight are finished."""

from __future__ import annotations

import asyncio
import signal
from datetime import timedelta

from billing.common.v1 import common_pb2
from billing_devtools.testing.plugin import InfraEnv, eventually

from .conftest import Gateway, gateway_process


async def test_a_terminated_pod_finishes_every_charge_it_has_in_flight(env: InfraEnv) -> None:
    # The drain setting is shorter than a gateway call here, as a careless deployment could set it.
    async with gateway_process(
        env, sandbox_latency=timedelta(seconds=3), grpc_shutdown_grace=timedelta(seconds=1)
    ) as gateway:
        assert gateway.process is not None
        calls = [asyncio.create_task(gateway.charge(f"key-{n}", reference=f"inv-{n}")) for n in range(5)]
        # Every charge is claimed and on its way to the gateway, which takes 3 s to answer.
        await eventually(lambda: _processing(gateway, 5), timeout=20)

        gateway.process.process.send_signal(signal.SIGTERM)
        answers = await asyncio.gather(*calls)

        assert [a.payment.status for a in answers] == [common_pb2.PAYMENT_STATUS_SUCCEEDED] * 5
        assert await gateway.process.process.wait() == 0
        statuses = await gateway.pool.fetch("SELECT status, count(*) FROM payments GROUP BY status")
        assert {r["status"]: r["count"] for r in statuses} == {"SUCCEEDED": 5}
        assert await gateway.gateway_calls() == 5


async def _processing(gateway: Gateway, wanted: int) -> bool:
    count = await gateway.pool.fetchval("SELECT count(*) FROM payments WHERE status = 'PROCESSING'")
    return int(count) == wanted
