"""Dunning: recovered share of the adaptive policy against a fixed one under the same attempt
budget (a simulation over the pure domain), and the time to drain due attempts with one and with
two worker processes (real PostgreSQL, Redis, RabbitMQ and a real recurring + sandbox gateway).

The simulated population (written down here, not learned from anywhere):
- decline-code mix: insufficient_funds 50%, do_not_honor 25%, generic_decline 15%,
  gateway_unreachable 10%; the first failure falls at a uniformly random time over 30 days;
- each attempt succeeds independently with chance base(code) x hour factor x day factor:
  insufficient_funds base 0.10, x2.2 from 17:00 to 22:59 UTC (after the day's deposits), x0.5
  from 00:00 to 05:59; do_not_honor base 0.08, x1.8 from 08:00 to 11:59; generic_decline 0.03
  at any hour; gateway_unreachable 0.55 at any hour; every code x0.7 on the day of the failure
  and x1.3 on days 2 and 3 after it.
- budget for both policies: 4 attempts within 14 days; fixed = days 1, 3, 5, 7; adaptive =
  gaps of 1 to 4 days, learning from the outcomes of the cohorts before (1,000 cases each).

Sizes: DUNNING_BENCH_POPULATION (default 10,000 cases), DUNNING_BENCH_DRAIN (default 1,000 due
attempts, so that `make bench` stays within minutes on 2 cores; the issue's figure is
DUNNING_BENCH_DRAIN=10000, whose setup alone bills 10,000 subscriptions through recurring).
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import asyncpg
import grpc

from bench.harness import bench_env
from billing.common.v1 import common_pb2 as common
from billing.recurring.v1 import recurring_pb2 as rpb
from billing.recurring.v1 import recurring_pb2_grpc
from billing_common import db
from billing_common.grpc_client import open_channel
from billing_common.service import run_event_loop
from billing_common.settings import CommonSettings
from billing_devtools.testing.plugin import InfraEnv
from billing_devtools.testing.processes import RunningProcess, free_port, start_process
from dunning.domain.estimator import AttemptContext, Observation, OutcomeCounts
from dunning.domain.policy import AdaptiveSchedule, FixedSchedule, RetryPolicy
from dunning.domain.schedule import Planning, plan_next_attempt

POPULATION = int(os.environ.get("DUNNING_BENCH_POPULATION", "10000"))
DRAIN = int(os.environ.get("DUNNING_BENCH_DRAIN", "1000"))
COHORT = 1000
MIX = [
    ("insufficient_funds", 0.50),
    ("do_not_honor", 0.25),
    ("generic_decline", 0.15),
    ("gateway_unreachable", 0.10),
]
BASE = {
    "insufficient_funds": 0.10,
    "do_not_honor": 0.08,
    "generic_decline": 0.03,
    "gateway_unreachable": 0.55,
}
START = datetime(2026, 1, 5, tzinfo=UTC)
WINDOW = timedelta(days=14)
FIXED = RetryPolicy("", 4, WINDOW, FixedSchedule((1, 3, 5, 7)))
ADAPTIVE = RetryPolicy("", 4, WINDOW, AdaptiveSchedule(timedelta(days=1), timedelta(days=4)))


def true_chance(code: str, first_failed_at: datetime, at: datetime) -> float:
    chance = BASE[code]
    if code == "insufficient_funds":
        chance *= 2.2 if 17 <= at.hour <= 22 else 0.5 if at.hour < 6 else 1.0
    elif code == "do_not_honor" and 8 <= at.hour < 12:
        chance *= 1.8
    days = (at - first_failed_at) // timedelta(days=1)
    chance *= 0.7 if days == 0 else 1.3 if days in (2, 3) else 1.0
    return min(chance, 1.0)


def population(rng: random.Random) -> list[tuple[str, datetime]]:
    codes = [c for c, _ in MIX]
    weights = [w for _, w in MIX]
    return [
        (rng.choices(codes, weights)[0], START + timedelta(seconds=rng.randrange(30 * 86400)))
        for _ in range(POPULATION)
    ]


def simulate(policy: RetryPolicy, cases: list[tuple[str, datetime]], learn: bool) -> tuple[float, float, int]:
    """Recovered share overall and in the last cohort, and attempts made."""
    rng = random.Random(7)  # the same draws for both policies
    observations: list[Observation] = []
    counts = OutcomeCounts()
    recovered = 0
    last_cohort_recovered = 0
    attempts = 0
    for index, (code, failed_at) in enumerate(cases):
        if learn and index % COHORT == 0:
            counts = OutcomeCounts.of_observations(observations)
        planning = Planning(policy, counts)
        started, previous, now = 0, None, failed_at
        while True:
            plan = plan_next_attempt(
                planning,
                decline_code=code,
                first_failed_at=failed_at,
                attempts_started=started,
                previous_attempt_at=previous,
                now=now,
            )
            if plan is None:
                break
            started += 1
            attempts += 1
            succeeded = rng.random() < true_chance(code, failed_at, plan.at)
            observations.append(Observation(AttemptContext.at(code, started, failed_at, plan.at), succeeded))
            if succeeded:
                recovered += 1
                if index >= len(cases) - COHORT:
                    last_cohort_recovered += 1
                break
            previous = now = plan.at
    return recovered / len(cases), last_cohort_recovered / min(COHORT, len(cases)), attempts


def compare_policies() -> None:
    cases = population(random.Random(42))
    started = time.perf_counter()
    fixed = simulate(FIXED, cases, learn=False)
    adaptive = simulate(ADAPTIVE, cases, learn=True)
    elapsed = time.perf_counter() - started
    print(f"population {len(cases)} failed payments, budget 4 attempts within 14 days ({elapsed:.1f} s)")
    for name, (share, last, attempts) in (("fixed days 1,3,5,7", fixed), ("adaptive (learning)", adaptive)):
        print(f"  {name:<22} recovered {share:6.1%}   last cohort {last:6.1%}   attempts {attempts}")
    print(f"  adaptive / fixed recovered share: {adaptive[0] / fixed[0]:.2f}")


# ---------------------------------------------------------------- draining due attempts


async def _recurring_answers(address: str, token: str) -> bool:
    async with open_channel(address, token) as channel:
        stub = recurring_pb2_grpc.RecurringServiceStub(channel)
        try:
            await stub.RetryInvoicePayment(
                rpb.RetryInvoicePaymentRequest(invoice_id="probe", idempotency_key="probe:1"), timeout=10
            )
        except grpc.aio.AioRpcError as exc:
            return exc.code() != grpc.StatusCode.UNIMPLEMENTED
    return True


async def _wait(check: Callable[[], object], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not await check():  # type: ignore[misc]
        if time.monotonic() > deadline:
            raise TimeoutError("the bench setup did not finish in time")
        await asyncio.sleep(0.5)


async def drain(env: InfraEnv) -> None:
    day = datetime(2031, 5, 5, tzinfo=UTC).date()
    gateway_env = {"GATEWAY_WEBHOOK_PORT": str(free_port())}
    processes: list[RunningProcess] = []
    try:
        quota = await start_process(
            "quota", "QUOTA", env.settings(CommonSettings, "quota", log_level="ERROR")
        )
        gateway = await start_process(
            "gateway_adapter",
            "GATEWAY",
            env.settings(CommonSettings, "gateway-adapter", log_level="ERROR"),
            gateway_env,
        )
        processes += [quota, gateway]
        recurring = await start_process(
            "recurring",
            "RECURRING",
            env.settings(CommonSettings, "recurring", log_level="ERROR"),
            {"RECURRING_QUOTA_ADDR": quota.address, "RECURRING_GATEWAY_ADAPTER_ADDR": gateway.address},
        )
        processes.append(recurring)
        if not await _recurring_answers(recurring.address, env.token("dunning")):
            print("drain: not measured (recurring does not implement RetryInvoicePayment)")
            return
        dunning_settings = env.settings(CommonSettings, "dunning", log_level="ERROR")
        dunning_env = {
            "DUNNING_RECURRING_ADDR": recurring.address,
            "DUNNING_WORKER_ENABLED": "false",
            "DUNNING_WORKER_POLL_INTERVAL": "0.1s",
        }
        receiver = await start_process("dunning", "DUNNING", dunning_settings, dunning_env)
        processes.append(receiver)
        async with open_channel(recurring.address, env.token("operator")) as channel:
            stub = recurring_pb2_grpc.RecurringServiceStub(channel)
            slots = asyncio.Semaphore(32)

            async def subscribe(n: int) -> None:
                async with slots:
                    await stub.CreateSubscription(
                        rpb.CreateSubscriptionRequest(
                            account_id=f"acct-{n}",
                            merchant_id="bench",
                            custom_amount=common.Money(amount_minor=2500, currency="USD"),
                            frequency=common.BILLING_FREQUENCY_WEEKLY,
                            start_date=common.Date(year=day.year, month=day.month, day=day.day),
                            payment_method=common.PaymentMethod(
                                type=common.PAYMENT_METHOD_TYPE_CARD, gateway_token="tok_insufficient_funds"
                            ),
                            idempotency_key=f"bench-{n}",
                        )
                    )

            setup_started = time.perf_counter()
            await asyncio.gather(*(subscribe(n) for n in range(DRAIN)))
            await stub.RunBilling(
                rpb.RunBillingRequest(
                    billing_date=common.Date(year=day.year, month=day.month, day=day.day),
                    kind=rpb.RUN_KIND_DAILY,
                )
            )
        admin = await asyncpg.connect(env.infra.postgres_admin_url)
        schema = db.quote_ident(f"dunning_{env.run_id}")
        try:

            async def all_cases_open() -> bool:
                return bool(await admin.fetchval(f"SELECT count(*) FROM {schema}.cases") >= DRAIN)

            await _wait(all_cases_open, 900)
            setup_seconds = time.perf_counter() - setup_started
            print(f"drain setup: {DRAIN} failed invoices and their cases in {setup_seconds:.0f} s")
            await receiver.terminate()
            processes.remove(receiver)
            for workers in (1, 2):
                worker_env = {**dunning_env, "DUNNING_WORKER_ENABLED": "true"}
                pods = [
                    await start_process("dunning", "DUNNING", dunning_settings, worker_env)
                    for _ in range(workers)
                ]
                processes += pods
                due_now = "due_at = now() - interval '1 minute'"
                started = time.perf_counter()
                await admin.execute(f"UPDATE {schema}.cases SET {due_now} WHERE state = 'retry_scheduled'")

                async def drained() -> bool:
                    left = await admin.fetchval(
                        f"SELECT count(*) FROM {schema}.cases WHERE due_at <= now() OR state = 'attempting'"
                    )
                    return bool(left == 0)

                await _wait(drained, 900)
                elapsed = time.perf_counter() - started
                print(
                    f"drain {DRAIN} due attempts with {workers} worker process(es): {elapsed:6.1f} s "
                    f"({DRAIN / elapsed:6.0f} attempts/s)"
                )
                for pod in pods:
                    await pod.terminate()
                    processes.remove(pod)
        finally:
            await admin.close()
    finally:
        for process in reversed(processes):
            await process.terminate()


async def main() -> None:
    compare_policies()
    async with bench_env() as env:
        await drain(env)


if __name__ == "__main__":
    run_event_loop(main())
