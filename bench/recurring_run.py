"""Billing run throughput: due subscriptions charged end to end against the sandbox gateway.

1. No latency, no rate limit: charges per second from RunBilling until the run completes
   (invoice, one ChargeBatch per batch through gateway-adapter, transactions, ledger, events for
   every occurrence), as a ratio to the echo baseline measured in the same round; CPU per charge
   of the gateway-adapter pod and of the recurring pods, and PostgreSQL commits per charge
   (pg_stat_database.xact_commit of a database only this bench uses).
2. A 200/s per-gateway rate limit and 50 ms of gateway latency: the achieved rate as a fraction
   of the limit, and the busiest rolling second (any 1 s window) on the gateway's clock, where the
   limit applies. Only gateway-adapter paces (`GATEWAY_RATE_LIMITS`), right before the gateway.

recurring and gateway-adapter run as real processes (`BENCH_RECURRING_PODS` recurring pods share
the work). Sizes: 100,000 subscriptions unpaced and 10,000 paced (50 s at the limit) by default;
`BENCH_RECURRING_SCALE=0.1` shrinks both for a quick run (`BENCH_RECURRING_UNPACED` and
`BENCH_RECURRING_PACED` set each size, 0 skips that case); `BENCH_RECURRING_ROUNDS` (3) rounds give
the spread; `BENCH_RECURRING_CONCURRENT_BATCHES` (4) batches of `BENCH_RECURRING_BATCH_SIZE` (100)
per pod at once. Rates are end to end: from RunBilling until GetRun says the run is over.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import statistics
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import date, timedelta

import asyncpg

from bench.echo_baseline import echo_caller
from bench.harness import (
    bench_env,
    busiest_second,
    closed_loop,
    cpu_seconds,
    gateway_stalls,
    gateway_window,
    scraped,
)
from billing.common.v1 import common_pb2
from billing.recurring.v1 import recurring_pb2 as pb
from billing.recurring.v1 import recurring_pb2_grpc
from billing_common import db
from billing_common.grpc_client import open_channel
from billing_common.service import run_event_loop
from billing_common.settings import CommonSettings
from billing_devtools.testing.plugin import InfraEnv
from billing_devtools.testing.processes import RunningProcess, free_port, start_process
from recurring.settings import RecurringSettings

SCALE = float(os.environ.get("BENCH_RECURRING_SCALE", "1"))
UNPACED = int(os.environ.get("BENCH_RECURRING_UNPACED", 100_000 * SCALE))
PACED = int(os.environ.get("BENCH_RECURRING_PACED", 10_000 * SCALE))
PODS = int(os.environ.get("BENCH_RECURRING_PODS", "2"))
ROUNDS = int(os.environ.get("BENCH_RECURRING_ROUNDS", "3"))
# Batches each pod works at once: a batch waits on gateway-adapter's pacing for most of its time,
# so more of them keep the gateway's turns taken.
BATCHES = int(os.environ.get("BENCH_RECURRING_CONCURRENT_BATCHES", "4"))
ECHO_CONCURRENCY = 64
ECHO_SECONDS = 4.0
# Its own database, so that the commits counted are this bench's alone.
DATABASE = "billing_bench_runs"
RATE_LIMIT = 200
GATEWAY = "sandbox-card"
LATE_TURNS = "billing_pacer_late_turns_total"
# Paced turns come about 5 ms apart: a pause of 4 turns at the gateway is a stall, not jitter.
STALL_S = 0.02
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


@contextlib.asynccontextmanager
async def _services(
    env: InfraEnv, rate_limit: int, latency: str, gateway_metrics_port: int = 0
) -> AsyncIterator[tuple[RunningProcess, list[RunningProcess]]]:
    gateway = await start_process(
        "gateway_adapter",
        "GATEWAY",
        env.settings(
            CommonSettings,
            "gateway-adapter",
            db_pool_max=20,
            log_level="ERROR",
            metrics_port=gateway_metrics_port,
        ),
        {
            "GATEWAY_WEBHOOK_PORT": str(free_port()),
            "GATEWAY_SANDBOX_LATENCY": latency,
            "GATEWAY_RATE_LIMITS": f"{GATEWAY}={rate_limit}",  # 0: no limit
        },
    )
    pods: list[RunningProcess] = []
    try:
        settings = env.settings(
            RecurringSettings,
            "recurring",
            quota_addr="127.0.0.1:1",  # custom-amount subscriptions never ask quota
            gateway_adapter_addr=gateway.address,
            worker_batch_size=int(os.environ.get("BENCH_RECURRING_BATCH_SIZE", "100")),
            worker_concurrent_batches=BATCHES,
            worker_idle_poll=timedelta(milliseconds=100),
            max_catch_up_days=1,
            db_pool_max=10,
            log_level="ERROR",
        )
        for _ in range(PODS):
            pods.append(await start_process("recurring", "RECURRING", settings))
        yield gateway, pods
    finally:
        for pod in pods:
            await pod.terminate()
        await gateway.terminate()


@dataclass(frozen=True)
class Measured:
    seconds: float
    run: pb.Run
    cpu_s: dict[str, float]  # by process: "gateway-adapter", "recurring"
    commits: int

    @property
    def rate(self) -> float:
        return self.run.counts.charged / self.seconds

    def per_charge(self, total: float) -> float:
        return total / max(1, self.run.counts.charged)


async def _commits(env: InfraEnv) -> int:
    conn = await asyncpg.connect(env.infra.postgres_admin_url)
    try:
        await conn.execute("SELECT pg_stat_clear_snapshot()")
        found = await conn.fetchval(
            "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"
        )
        return int(found)
    finally:
        await conn.close()


def _cpu(gateway: RunningProcess, pods: list[RunningProcess]) -> dict[str, float]:
    return {
        "gateway-adapter": cpu_seconds(gateway.process.pid),
        "recurring": sum(cpu_seconds(pod.process.pid) for pod in pods),
    }


async def _run(env: InfraEnv, gateway: RunningProcess, pods: list[RunningProcess], count: int) -> Measured:
    await _seed(env, count)
    async with open_channel(pods[0].address, env.token("operator")) as channel:
        stub = recurring_pb2_grpc.RecurringServiceStub(channel)
        cpu_before, commits_before = _cpu(gateway, pods), await _commits(env)
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
                break
            await asyncio.sleep(0.25)
        seconds = time.perf_counter() - started
        cpu_after, commits_after = _cpu(gateway, pods), await _commits(env)
    return Measured(
        seconds,
        run,
        {name: cpu_after[name] - cpu_before[name] for name in cpu_before},
        commits_after - commits_before,
    )


def _spread(values: list[float], digits: int = 3) -> str:
    return (
        f"median {statistics.median(values):.{digits}f} "
        f"(min {min(values):.{digits}f}, max {max(values):.{digits}f}, n={len(values)})"
    )


async def main() -> None:
    ratios: list[float] = []
    gateway_cpu: list[float] = []
    recurring_cpu: list[float] = []
    commits: list[float] = []
    paced: list[float] = []
    busiest: list[int] = []
    at_gateway: list[float] = []
    late: list[float] = []
    stalled: list[float] = []
    for round_number in range(ROUNDS):
        if UNPACED:
            async with bench_env(DATABASE) as env, echo_caller(env) as echo_call:
                echo = await closed_loop("echo (service host)", echo_call, ECHO_CONCURRENCY, ECHO_SECONDS)
            async with bench_env(DATABASE) as env, _services(env, 0, "0s") as (gateway, pods):
                measured = await _run(env, gateway, pods, UNPACED)
            ratios.append(measured.rate / echo.rps)
            gateway_cpu.append(measured.per_charge(measured.cpu_s["gateway-adapter"]) * 1000)
            recurring_cpu.append(measured.per_charge(measured.cpu_s["recurring"]) * 1000)
            commits.append(measured.per_charge(measured.commits))
            print(
                f"r{round_number} recurring run, no latency  n={UNPACED:<7} pods={PODS}x{BATCHES} "
                f"{measured.rate:8.0f} charges/s = {ratios[-1]:.3f} of echo ({echo.rps:.0f} calls/s at "
                f"{ECHO_CONCURRENCY}); CPU ms/charge gateway-adapter {gateway_cpu[-1]:.2f}, "
                f"recurring {recurring_cpu[-1]:.2f}; commits/charge {commits[-1]:.2f}"
                f"  ({measured.run.counts.charged} charged in {measured.seconds:.1f} s, "
                f"state {pb.RunState.Name(measured.run.state)})"
            )
        if not PACED:
            continue
        metrics_port = free_port()
        async with (
            bench_env(DATABASE) as env,
            _services(env, RATE_LIMIT, "0.05s", metrics_port) as (gateway, pods),
        ):
            measured = await _run(env, gateway, pods, PACED)
            busiest.append(await busiest_second(env))
            window = await gateway_window(env)
            stalls = await gateway_stalls(env, STALL_S)
            late_turns = await scraped(metrics_port, LATE_TURNS, gateway=GATEWAY)
        charged = measured.run.counts.charged
        paced.append(measured.rate / RATE_LIMIT)
        at_gateway.append(charged / window / RATE_LIMIT)
        late.append(late_turns * 1000 / max(1, charged))
        stalled.append(stalls.seconds)
        print(
            f"r{round_number} recurring run, {RATE_LIMIT}/s limit, 50 ms  n={PACED:<7} pods={PODS}x{BATCHES} "
            f"{measured.rate:8.1f} charges/s = {paced[-1]:.3f} of the limit; busiest 1 s at the gateway "
            f"{busiest[-1]}/{RATE_LIMIT}  ({charged} charged in {measured.seconds:.1f} s;"
            f" first to last charge at the gateway {window:.1f} s = {at_gateway[-1]:.3f} of the limit);"
            f" late turns {late[-1]:.1f} per 1,000 charges; {stalls.count} pauses over"
            f" {STALL_S * 1000:.0f} ms at the gateway, {stalls.seconds:.2f} s in all"
        )
    if ratios:
        print(f"recurring run charges/s ratio to echo {_spread(ratios)}")
        print(f"gateway-adapter CPU ms per charge {_spread(gateway_cpu, 2)}")
        print(f"recurring CPU ms per charge (all pods) {_spread(recurring_cpu, 2)}")
        print(f"PostgreSQL commits per charge {_spread(commits, 2)}")
    if paced:
        print(
            f"paced run fraction of the {RATE_LIMIT}/s limit {_spread(paced)};"
            f" busiest second max {max(busiest)}"
        )
        print(f"paced, first to last charge at the gateway: fraction of the limit {_spread(at_gateway)}")
        print(f"paced, late turns per 1,000 charges {_spread(late, 1)}")
        print(f"paced, seconds in pauses over {STALL_S * 1000:.0f} ms at the gateway {_spread(stalled, 2)}")


if __name__ == "__main__":
    run_event_loop(main())
