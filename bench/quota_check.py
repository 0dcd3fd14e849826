"""Quota hot path: CheckQuota req/s at 16 concurrent calls as a ratio to the echo baseline of the
same run, with p50/p99; and durable RecordUsageBatch events per second.

The echo server and two quota pods (one answering checks from tracked counters, as deployed, one
with the counter cache off, asking Redis every time) run side by side, and short rounds alternate
between them, so that a change in this shared machine's speed falls on all of them alike. The
figures are over all the rounds' calls: the ratio is quota's calls per second of its rounds over
echo's of theirs (the spread of the single rounds' ratios is printed beside it).

Targets: ratio >= 0.8, p99 < 10 ms, >= 20,000 durable events/s.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import time
import uuid
from typing import Any

import aio_pika

from bench.echo_baseline import echo_caller
from bench.harness import Figures, bench_env, closed_loop, open_loop, pooled, server_process
from billing.common.v1 import common_pb2
from billing.events.v1 import subscription_pb2 as sub
from billing.quota.v1 import quota_pb2 as pb
from billing.quota.v1 import quota_pb2_grpc
from billing_common.grpc_client import open_channel
from billing_common.service import run_event_loop
from billing_devtools.testing.plugin import eventually
from quota.entrypoints.main import MIGRATIONS, build
from quota.settings import QuotaSettings

CONCURRENCY = 16
SECONDS = 1.0  # per round: this machine's speed drifts by a third within minutes
ROUNDS = 15
OPEN_SECONDS = 3.0
# Beside the closed loop (which runs the pod flat out): a fixed offered rate, about half of what
# echo serves here, to show the latency callers see below saturation.
OPEN_RATE = 1500.0
OPEN_ROUNDS = 3
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
        tracked_settings = env.settings(QuotaSettings, "quota")
        direct_settings = env.settings(QuotaSettings, "quota", counter_cache_entries=0)
        with contextlib.ExitStack() as servers:
            tracked_pod = servers.enter_context(
                server_process("bench.quota_check:quota_factory", tracked_settings, str(MIGRATIONS))
            )
            direct_pod = servers.enter_context(
                server_process("bench.quota_check:quota_factory", direct_settings, str(MIGRATIONS))
            )
            async with (
                echo_caller(env) as echo_call,
                open_channel(f"127.0.0.1:{tracked_pod.port}", env.token("operator")) as tracked_channel,
                open_channel(f"127.0.0.1:{direct_pod.port}", env.token("operator")) as direct_channel,
            ):
                stub = quota_pb2_grpc.QuotaServiceStub(tracked_channel)
                direct = quota_pb2_grpc.QuotaServiceStub(direct_channel)
                await _create_plan(stub)
                await _subscribe(env, "bench-tenant")
                request = pb.CheckQuotaRequest(tenant_id="bench-tenant", key="storage.files", amount=1)
                await eventually(lambda: _allowed(stub, request), timeout=30)
                await eventually(lambda: _allowed(direct, request), timeout=30)
                rounds: dict[str, list[Figures]] = {"echo": [], "tracked": [], "direct": []}
                for _ in range(ROUNDS):
                    rounds["echo"].append(await closed_loop("echo", echo_call, CONCURRENCY, SECONDS))
                    rounds["tracked"].append(
                        await closed_loop("tracked", lambda _: stub.CheckQuota(request), CONCURRENCY, SECONDS)
                    )
                    rounds["direct"].append(
                        await closed_loop(
                            "direct", lambda _: direct.CheckQuota(request), CONCURRENCY, SECONDS
                        )
                    )
                offered: dict[str, list[Figures]] = {"echo": [], "tracked": []}
                for _ in range(OPEN_ROUNDS):
                    offered["echo"].append(await open_loop("echo", echo_call, OPEN_RATE, OPEN_SECONDS))
                    offered["tracked"].append(
                        await open_loop(
                            "tracked", lambda _: stub.CheckQuota(request), OPEN_RATE, OPEN_SECONDS
                        )
                    )
                rate = await _record_batches(stub)
    echo = pooled("echo (service host)", rounds["echo"])
    check = pooled("quota CheckQuota", rounds["tracked"])
    uncached = pooled("quota CheckQuota, no counter cache", rounds["direct"])
    ratios = [t.rps / e.rps for t, e in zip(rounds["tracked"], rounds["echo"], strict=True)]
    print(echo.line())
    print(check.line(echo))
    print(uncached.line(echo))
    print(
        f"CheckQuota ratio to echo {check.rps / echo.rps:.2f} (target >= 0.8; {ROUNDS} rounds of "
        f"{SECONDS:.0f} s, the rounds' own ratios' quartiles {_quartiles(ratios)}); "
        f"p50 {check.p50_ms:.2f} ms, p99 {check.p99_ms:.2f} ms "
        f"(target p99 < 10 ms; echo's p99 {echo.p99_ms:.2f} ms); asking Redis every time: "
        f"{uncached.rps / echo.rps:.2f}"
    )
    for name, runs in offered.items():
        middle = sorted(runs, key=lambda f: f.p99_ms)[len(runs) // 2]
        print(
            f"open loop, {OPEN_RATE:,.0f} calls/s offered, {name}: p50 {middle.p50_ms:.2f} ms, "
            f"p99 {middle.p99_ms:.2f} ms (rounds' p99 {', '.join(f'{f.p99_ms:.1f}' for f in runs)}; "
            f"at most {max(f.concurrency for f in runs)} in flight)"
        )
    print(f"RecordUsageBatch: {rate:,.0f} durable events/s in batches of {BATCH} (target >= 20,000)")


async def _create_plan(stub: Any) -> None:
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


async def _record_batches(stub: Any) -> float:
    """Durable events per second: BATCH_CALLS batches from BATCH_CONCURRENCY callers."""

    async def batch(call: int) -> None:
        events = [
            pb.UsageEvent(tenant_id="bench-tenant", key="api.calls", delta=1, idempotency_key=f"b{call}-{i}")
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
    return BATCH_CALLS * BATCH / (time.perf_counter() - started)


def _quartiles(values: list[float]) -> str:
    low, _, high = statistics.quantiles(values, n=4)
    return f"{low:.2f}-{high:.2f}"


if __name__ == "__main__":
    run_event_loop(main())
