"""Dunning: recovered share of the adaptive policy against a fixed one under the same attempt
budget (a simulation over the pure domain), and the time to drain due attempts with one and with
two worker processes (real PostgreSQL, Redis and RabbitMQ; recurring is a stand-in that declines
every retry after 50 ms, so that the figure is dunning's own pace, not the payment path's).

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

The drain's cases are opened by invoice.payment_failed events published as recurring's relay
would (an insufficient-funds soft decline each); every case's next attempt is then made due at
once, with one worker pod and then with two, and the drain ends when no attempt is due or running.

Sizes: DUNNING_BENCH_POPULATION (default 10,000 cases), DUNNING_BENCH_DRAIN (default 10,000 due
attempts).
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing as mp
import os
import random
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import grpc

from bench.harness import bench_env, cpu_seconds, serve_bare
from billing.common.v1 import common_pb2 as common
from billing.events.v1 import invoice_pb2 as invoice_events
from billing.recurring.v1 import recurring_pb2 as rpb
from billing_common import db
from billing_common.service import run_event_loop
from billing_common.settings import CommonSettings
from billing_devtools.testing.plugin import InfraEnv
from billing_devtools.testing.processes import RunningProcess, start_process
from dunning.domain.estimator import AttemptContext, Observation, OutcomeCounts
from dunning.domain.policy import AdaptiveSchedule, FixedSchedule, RetryPolicy
from dunning.domain.schedule import Planning, plan_next_attempt

POPULATION = int(os.environ.get("DUNNING_BENCH_POPULATION", "10000"))
# Its own database, so that the commits counted are the drain's alone.
DATABASE = "billing_bench_dunning"
DRAIN = int(os.environ.get("DUNNING_BENCH_DRAIN", "10000"))
RECURRING_LATENCY = timedelta(milliseconds=50)
RECURRING_SERVICE = rpb.DESCRIPTOR.services_by_name["RecurringService"].full_name
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


async def _declined_retry(
    request: rpb.RetryInvoicePaymentRequest, context: grpc.aio.ServicerContext[Any, Any]
) -> rpb.RetryInvoicePaymentResponse:
    """recurring as dunning sees it on a retry: an answer after `RECURRING_LATENCY`, declined."""
    await asyncio.sleep(RECURRING_LATENCY.total_seconds())
    return rpb.RetryInvoicePaymentResponse(
        invoice=rpb.Invoice(invoice_id=request.invoice_id, status=rpb.INVOICE_STATUS_OPEN),
        transaction=rpb.Transaction(
            status=common.PAYMENT_STATUS_DECLINED,
            failure_type=common.FAILURE_TYPE_CARDHOLDER,
            decline_kind=common.DECLINE_KIND_SOFT,
            decline_code="insufficient_funds",
        ),
    )


def _stand_in_recurring(ports: Any, stop: Any) -> None:
    async def main() -> None:
        server = grpc.aio.server()
        retry = grpc.unary_unary_rpc_method_handler(
            _declined_retry,
            request_deserializer=rpb.RetryInvoicePaymentRequest.FromString,
            response_serializer=rpb.RetryInvoicePaymentResponse.SerializeToString,
        )
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(RECURRING_SERVICE, {"RetryInvoicePayment": retry}),)
        )
        await serve_bare(server, ports, stop)

    run_event_loop(main())


@contextlib.contextmanager
def stand_in_recurring() -> Iterator[str]:
    """The stand-in in its own process; its address."""
    ctx = mp.get_context("spawn")
    ports, stop = ctx.Queue(), ctx.Event()
    process = ctx.Process(target=_stand_in_recurring, args=(ports, stop), daemon=True)
    process.start()
    try:
        yield f"127.0.0.1:{ports.get(timeout=60)}"
    finally:
        stop.set()
        process.join(timeout=10)


async def _publish_failures(env: InfraEnv, count: int) -> None:
    """invoice.payment_failed for `count` invoices, as recurring's outbox relay publishes them."""
    await env.publish_many(
        [
            invoice_events.InvoicePaymentFailed(
                invoice=invoice_events.InvoiceFacts(
                    invoice_id=f"inv-bench-{n}",
                    subscription_id=f"sub-bench-{n}",
                    account_id=f"acct-{n}",
                    merchant_id="bench",
                    amount_due=common.Money(amount_minor=2500, currency="USD"),
                ),
                payment_id=f"pay-bench-{n}",
                failure_type=common.FAILURE_TYPE_CARDHOLDER,
                decline_kind=common.DECLINE_KIND_SOFT,
                retryable=True,
                decline_code="insufficient_funds",
                attempt=1,
            )
            for n in range(count)
        ]
    )


async def _wait(check: Callable[[], object], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not await check():  # type: ignore[misc]
        if time.monotonic() > deadline:
            raise TimeoutError("the bench setup did not finish in time")
        await asyncio.sleep(0.5)


async def _commits(admin: asyncpg.Connection) -> int:
    """Transactions committed in the bench's database so far (every process of the drain)."""
    await admin.execute("SELECT pg_stat_clear_snapshot()")
    found = await admin.fetchval(
        "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"
    )
    return int(found)


async def drain(env: InfraEnv, recurring_addr: str) -> None:
    processes: list[RunningProcess] = []
    try:
        dunning_settings = env.settings(CommonSettings, "dunning", log_level="ERROR")
        dunning_env = {
            "DUNNING_RECURRING_ADDR": recurring_addr,
            "DUNNING_WORKER_ENABLED": "false",
            "DUNNING_WORKER_POLL_INTERVAL": "0.1s",
        }
        receiver = await start_process("dunning", "DUNNING", dunning_settings, dunning_env)
        processes.append(receiver)
        setup_started = time.perf_counter()
        await _publish_failures(env, DRAIN)
        admin = await asyncpg.connect(env.infra.postgres_admin_url)
        schema = db.quote_ident(f"dunning_{env.run_id}")
        try:

            async def all_cases_open() -> bool:
                return bool(await admin.fetchval(f"SELECT count(*) FROM {schema}.cases") >= DRAIN)

            await _wait(all_cases_open, 900)
            setup_seconds = time.perf_counter() - setup_started
            print(f"drain setup: {DRAIN} failed invoices and their cases in {setup_seconds:.0f} s")
            rates: dict[int, float] = {}
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
                load = os.getloadavg()[0]
                cpu_before = sum(cpu_seconds(pod.process.pid) for pod in pods)
                commits_before = await _commits(admin)
                started = time.perf_counter()
                await admin.execute(f"UPDATE {schema}.cases SET {due_now} WHERE state = 'retry_scheduled'")

                async def drained() -> bool:
                    left = await admin.fetchval(
                        f"SELECT count(*) FROM {schema}.cases WHERE due_at <= now() OR state = 'attempting'"
                    )
                    return bool(left == 0)

                await _wait(drained, 900)
                elapsed = time.perf_counter() - started
                cpu_ms = (sum(cpu_seconds(pod.process.pid) for pod in pods) - cpu_before) * 1000 / DRAIN
                commits = (await _commits(admin) - commits_before) / DRAIN
                rates[workers] = DRAIN / elapsed
                print(
                    f"drain {DRAIN} due attempts with {workers} worker process(es): {elapsed:6.1f} s "
                    f"({rates[workers]:6.0f} attempts/s; per attempt dunning CPU {cpu_ms:.2f} ms and "
                    f"{commits:.2f} PostgreSQL commits; recurring "
                    f"answers in {RECURRING_LATENCY.total_seconds() * 1000:.0f} ms; load average {load:.2f})"
                )
                for pod in pods:
                    await pod.terminate()
                    processes.remove(pod)
            print(f"drain: 2 workers / 1 worker = {rates[2] / rates[1]:.2f}")
        finally:
            await admin.close()
    finally:
        for process in reversed(processes):
            await process.terminate()


async def main() -> None:
    compare_policies()
    with stand_in_recurring() as recurring_addr:
        async with bench_env(DATABASE) as env:
            await drain(env, recurring_addr)


if __name__ == "__main__":
    run_event_loop(main())
