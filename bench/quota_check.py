"""Quota hot path: CheckQuota req/s at 16 concurrent calls as a ratio to the echo baseline of the
same run, with p50/p99; and durable RecordUsageBatch events per second.

Targets: ratio >= 0.8, p99 < 10 ms, >= 20,000 durable events/s.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import aio_pika

from bench.echo_baseline import measure_echo
from bench.harness import bench_env, closed_loop, server_process
from billing.common.v1 import common_pb2
from billing.events.v1 import subscription_pb2 as sub
from billing.quota.v1 import quota_pb2 as pb
from billing.quota.v1 import quota_pb2_grpc
from billing_common.grpc_client import open_channel
from billing_common.testing.plugin import eventually
from quota.entrypoints.main import MIGRATIONS, build
from quota.settings import QuotaSettings

CONCURRENCY = 16
SECONDS = 4.0
BATCH = 2000
BATCH_CALLS = 20
BATCH_CONCURRENCY = 2


def quota_factory(settings: QuotaSettings) -> Any:
    return build(settings)


async def _subscribe(env: Any, tenant: str) -> None:
    snapshot = sub.SubscriptionSnapshot(
        subscription_id=f"sub-{tenant}",
        account_id=tenant,
        status=sub.SUBSCRIPTION_STATE_ACTIVE,
        plan_code="bench",
        version=1,
    )
    snapshot.current_period_start.GetCurrentTime()
    snapshot.current_period_end.FromSeconds(snapshot.current_period_start.seconds + 30 * 86400)
    event = sub.SubscriptionCreated(subscription=snapshot)
    event.header.event_id = str(uuid.uuid4())
    connection = await aio_pika.connect(env.infra.amqp_url)
    async with connection:
        channel = await connection.channel()
        exchange = await channel.declare_exchange(env.exchange, aio_pika.ExchangeType.TOPIC, durable=True)
        await exchange.publish(
            aio_pika.Message(event.SerializeToString(), type="subscription.created"),
            routing_key="subscription.created",
        )


async def _allowed(stub: Any, request: pb.CheckQuotaRequest) -> bool:
    return bool((await stub.CheckQuota(request)).allowed)


async def main() -> None:
    async with bench_env() as env:
        echo = (await measure_echo(env, SECONDS))[CONCURRENCY]
        settings = env.settings(QuotaSettings, "quota", log_level="WARNING")
        with server_process("bench.quota_check:quota_factory", settings, str(MIGRATIONS)) as port:
            async with open_channel(f"127.0.0.1:{port}", env.token("operator")) as channel:
                stub = quota_pb2_grpc.QuotaServiceStub(channel)
                entitlements = [
                    pb.Entitlement(
                        key="api.calls",
                        unlimited=True,
                        period=pb.PERIOD_CALENDAR_MONTH,
                        behaviour=pb.OVER_QUOTA_BEHAVIOUR_ALLOW,
                    ),
                    pb.Entitlement(
                        key="storage.files",
                        limit=1_000_000,
                        period=pb.PERIOD_BILLING,
                        behaviour=pb.OVER_QUOTA_BEHAVIOUR_DENY,
                    ),
                ]
                await stub.CreatePlan(
                    pb.CreatePlanRequest(
                        code="bench",
                        idempotency_key="bench",
                        spec=pb.PlanSpec(
                            name="Bench",
                            price=common_pb2.Money(amount_minor=100, currency="USD"),
                            frequency=common_pb2.BILLING_FREQUENCY_MONTHLY,
                            entitlements=entitlements,
                        ),
                    )
                )
                await _subscribe(env, "bench-tenant")
                request = pb.CheckQuotaRequest(tenant_id="bench-tenant", key="storage.files", amount=1)
                await eventually(lambda: _allowed(stub, request), timeout=30)
                check = await closed_loop(
                    "quota CheckQuota", lambda _: stub.CheckQuota(request), CONCURRENCY, SECONDS
                )

                async def batch(call: int) -> None:
                    events = [
                        pb.UsageEvent(
                            tenant_id="bench-tenant", key="api.calls", delta=1, idempotency_key=f"b{call}-{i}"
                        )
                        for i in range(BATCH)
                    ]
                    reply = await stub.RecordUsageBatch(pb.RecordUsageBatchRequest(events=events))
                    assert all(r.outcome == pb.USAGE_OUTCOME_COUNTED for r in reply.results)

                await batch(-1)
                started = time.perf_counter()
                calls = iter(range(BATCH_CALLS))

                async def worker() -> None:
                    for call in calls:
                        await batch(call)

                await asyncio.gather(*(worker() for _ in range(BATCH_CONCURRENCY)))
                rate = BATCH_CALLS * BATCH / (time.perf_counter() - started)
    print(echo.line())
    print(check.line(echo))
    print(
        f"CheckQuota ratio to echo {check.rps / echo.rps:.2f} (target >= 0.8); "
        f"p50 {check.p50_ms:.2f} ms, p99 {check.p99_ms:.2f} ms (target p99 < 10 ms)"
    )
    print(f"RecordUsageBatch: {rate:,.0f} durable events/s in batches of {BATCH} (target >= 20,000)")


if __name__ == "__main__":
    asyncio.run(main())
