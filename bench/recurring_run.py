"""Billing run throughput: due subscriptions charged end to end against the sandbox gateway.

1. No latency, no rate limit: charges per second from RunBilling until the run completes
   (invoice, charge through gateway-adapter, transaction, ledger, events for every occurrence).
2. A 200/s per-gateway rate limit and 50 ms of gateway latency: the achieved rate as a fraction
   of the limit, and the busiest rolling second (any 1 s window) on the gateway's clock, where the
   limit applies. recurring paces the run at the limit and gateway-adapter keeps it
   (`GATEWAY_RATE_LIMITS`) right before the gateway.

recurring and gateway-adapter run as real processes (`BENCH_RECURRING_PODS` recurring pods share
the work). Sizes: 100,000 subscriptions unpaced and 10,000 paced (50 s at the limit) by default;
`BENCH_RECURRING_SCALE=0.1` shrinks both for a quick run. Rates are end to end: from RunBilling
until GetRun says the run is over.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator
from datetime import date, timedelta

import asyncpg

from bench.harness import bench_env
from billing.common.v1 import common_pb2
from billing.recurring.v1 import recurring_pb2 as pb
from billing.recurring.v1 import recurring_pb2_grpc
from billing_common import db
from billing_common.grpc_client import open_channel
from billing_common.service import run_event_loop
from billing_common.settings import CommonSettings
from billing_common.testing.plugin import InfraEnv
from billing_common.testing.processes import RunningProcess, free_port, start_process
from recurring.settings import RecurringSettings

SCALE = float(os.environ.get("BENCH_RECURRING_SCALE", "1"))
UNPACED = int(100_000 * SCALE)
PACED = int(10_000 * SCALE)
PODS = int(os.environ.get("BENCH_RECURRING_PODS", "2"))
RATE_LIMIT = 200
DAY = date(2031, 5, 5)


async def _seed(env: InfraEnv, count: int) -> None:
    """Due weekly subscriptions written straight into recurring's tables (setup, not measured)."""
    conn = await asyncpg.connect(env.infra.postgres_admin_url)
    try:
        schema = db.quote_ident(f"recurring_{env.run_id}")
        await conn.execute(
            f"""INSERT INTO {schema}.subscriptions (subscription_id, account_id, merchant_id, status,
                    plan_code, plan_version, amount_minor, currency, frequency, start_date, anchor_day,
                    method_type, gateway_token, trial_days, current_period_start, current_period_end,
                    next_billing_date, version, created_at, updated_at)
                SELECT 'sub_bench_' || n, 'acct-' || n, 'bench', 'active', '', 0, 1000 + n % 1000, 'USD',
                       'weekly', $1::date, $2, 'card', 'tok_success', 0, $1::date, $1::date + 7, $1::date, 1,
                       now(), now()
                FROM generate_series(1, $3) AS n""",
            DAY,
            DAY.day,
            count,
        )
    finally:
        await conn.close()


async def _busiest_second(env: InfraEnv) -> int:
    """The most charges that arrived at the sandbox gateway within any one second (any alignment)."""
    conn = await asyncpg.connect(env.infra.postgres_admin_url)
    try:
        schema = db.quote_ident(f"gateway_adapter_{env.run_id}")
        busiest = await conn.fetchval(
            f"""SELECT coalesce(max(n), 0) FROM (
                    SELECT count(*) OVER (
                        ORDER BY created_at
                        RANGE BETWEEN CURRENT ROW AND INTERVAL '999999 microseconds' FOLLOWING
                    ) AS n
                    FROM {schema}.sandbox_charges
                ) windows"""
        )
        return int(busiest)
    finally:
        await conn.close()


@contextlib.asynccontextmanager
async def _services(env: InfraEnv, rate_limit: int, latency: str) -> AsyncIterator[list[RunningProcess]]:
    gateway = await start_process(
        "gateway_adapter",
        "GATEWAY",
        env.settings(CommonSettings, "gateway-adapter", db_pool_max=20, log_level="ERROR"),
        {
            "GATEWAY_WEBHOOK_PORT": str(free_port()),
            "GATEWAY_SANDBOX_LATENCY": latency,
            "GATEWAY_RATE_LIMITS": f"sandbox-card={rate_limit}",  # 0: no limit
        },
    )
    pods: list[RunningProcess] = []
    try:
        settings = env.settings(
            RecurringSettings,
            "recurring",
            quota_addr="127.0.0.1:1",  # custom-amount subscriptions never ask quota
            gateway_adapter_addr=gateway.address,
            gateway_rate_limit=rate_limit,
            max_in_flight=64,
            worker_batch_size=100,
            worker_idle_poll=timedelta(milliseconds=100),
            max_catch_up_days=1,
            db_pool_max=10,
            log_level="ERROR",
        )
        for _ in range(PODS):
            pods.append(await start_process("recurring", "RECURRING", settings))
        yield pods
    finally:
        for pod in pods:
            await pod.terminate()
        await gateway.terminate()


async def _run(env: InfraEnv, pods: list[RunningProcess], count: int) -> tuple[float, pb.Run]:
    await _seed(env, count)
    async with open_channel(pods[0].address, env.token("operator")) as channel:
        stub = recurring_pb2_grpc.RecurringServiceStub(channel)
        started = time.perf_counter()
        reply = await stub.RunBilling(
            pb.RunBillingRequest(
                billing_date=common_pb2.Date(year=DAY.year, month=DAY.month, day=DAY.day),
                kind=pb.RUN_KIND_DAILY,
            ),
            timeout=600,
        )
        while True:
            run = (await stub.GetRun(pb.GetRunRequest(run_id=reply.run.run_id))).run
            if run.state != pb.RUN_STATE_RUNNING:
                return time.perf_counter() - started, run
            await asyncio.sleep(0.25)


async def main() -> None:
    async with bench_env() as env, _services(env, 0, "0s") as pods:
        seconds, run = await _run(env, pods, UNPACED)
        print(
            f"recurring run, no latency          n={UNPACED:<7} pods={PODS} "
            f"{run.counts.charged / seconds:8.0f} charges/s"
            f"  ({run.counts.charged} charged in {seconds:.1f} s, state {pb.RunState.Name(run.state)})"
        )
    async with bench_env() as env, _services(env, RATE_LIMIT, "0.05s") as pods:
        seconds, run = await _run(env, pods, PACED)
        rate = run.counts.charged / seconds
        busiest = await _busiest_second(env)
        print(
            f"recurring run, {RATE_LIMIT}/s limit, 50 ms  n={PACED:<7} pods={PODS} {rate:8.1f} charges/s"
            f"  = {rate / RATE_LIMIT:.3f} of the limit; busiest 1 s at the gateway {busiest}/{RATE_LIMIT}"
            f"  ({run.counts.charged} charged in {seconds:.1f} s)"
        )


if __name__ == "__main__":
    run_event_loop(main())
