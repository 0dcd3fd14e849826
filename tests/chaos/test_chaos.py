"""Chaos: billing runs go on while pods are killed and the database, broker and Redis fail.

Five billing dates, driven by recurring's test clock, each with its own customers (healthy cards,
soft and hard declines) and its own fault in the middle of its run: recurring SIGKILLed and
restarted; gateway-adapter SIGKILLed with charges in flight at a slow sandbox gateway and
restarted; the broker stopped; the database stopped; Redis flushed. Usage is recorded and quota
checked all along. Once everything has settled, the promises are checked customer by customer
(see `checks.py`): exactly one successful charge per due occurrence on the sandbox's own table,
every failed invoice with exactly one dunning case and no healthy card in dunning, balanced
ledgers, quota counters equal to the usage ledger.

`BILLING_CHAOS_SIZE=full` (`make chaos`) bills 200 customers per date; the default, reduced
size (in `make test`) bills 40.
"""

from __future__ import annotations

import asyncio
import functools
from collections import Counter
from datetime import UTC, datetime, time, timedelta
from pathlib import Path

import pytest

from billing.recurring.v1 import recurring_pb2 as rpb
from tests.chaos.checks import Findings, bounded, check_everything, sandbox_charges
from tests.chaos.conftest import FIGURES
from tests.chaos.figures import errors_in_logs, event_counts, summary
from tests.chaos.harness import ChaosSuite, Servers, chaos_suite
from tests.chaos.scenarios import (
    SIZE,
    Scenario,
    run_scenario,
    scenarios,
    settle,
    tuning,
    wait_until_quota_knows,
)
from tests.chaos.workload import HEALTHY, Customer, UsageLoad, customers, plan_request, subscribe


async def prepare(suite: ChaosSuite, plan: list[Scenario]) -> list[Customer]:
    """The plan, every date's customers subscribed (before their dates), and quota told of them."""
    first_date = plan[0].billing_date
    await suite.set_clock(datetime.combine(first_date - timedelta(days=1), time(12), UTC))
    await suite.stub("quota").CreatePlan(plan_request(), timeout=30)
    everyone = [c for s in plan for c in s.customers]
    await bounded(functools.partial(subscribe, suite.stub("recurring"), c) for c in everyone)
    await wait_until_quota_knows(suite, everyone)
    return everyone


async def check_runs_queues_and_health(suite: ChaosSuite, plan: list[Scenario], findings: Findings) -> None:
    for scenario in plan:
        run = (
            await suite.stub("recurring").GetRun(rpb.GetRunRequest(run_id=scenario.run_id), timeout=30)
        ).run
        if run.state != rpb.RUN_STATE_COMPLETED:
            state = rpb.RunState.Name(run.state)
            findings.add(
                "run not COMPLETED", f"{scenario.name}: {run.run_id} {state} {str(run.counts).strip()!r}"
            )
    for queue, depth in (await suite.queue_depths()).items():
        if queue.endswith(".dlq") and depth:
            findings.add("events dead-lettered (lost to their consumer)", f"{depth} in {queue}")
    for name, up in (await suite.serving()).items():
        if not up:
            findings.add("service not SERVING at the end", name)


# Generous: on a machine shared with other work, the reduced size has taken 10 minutes.
@pytest.mark.timeout(3600 if SIZE.name == "full" else 1500)
async def test_billing_runs_charge_once_and_lose_nothing_while_pods_and_servers_fail(
    servers: Servers, tmp_path: Path
) -> None:
    loop = asyncio.get_running_loop()
    timings: dict[str, float] = {"servers": servers.boot_seconds}
    mark = loop.time()

    def lap(phase: str) -> None:
        nonlocal mark
        timings[phase] = loop.time() - mark
        mark = loop.time()

    findings = Findings()
    first_date = datetime.now(UTC).date() + timedelta(days=2)
    plan = scenarios()
    for number, scenario in enumerate(plan, start=1):
        scenario.number = number
        scenario.billing_date = first_date + timedelta(days=number - 1)
        scenario.customers = customers(
            number, scenario.merchant, SIZE.customers_per_date, scenario.billing_date
        )

    async with chaos_suite(servers, tmp_path, tuning(SIZE)) as suite:
        lap("services")
        everyone = await prepare(suite, plan)
        lap("subscriptions")
        usage = UsageLoad(suite.stub("quota"), [c.account for c in everyone], SIZE.usage_rate)
        load = asyncio.ensure_future(usage.run())
        try:
            for scenario in plan:
                await run_scenario(suite, scenario, usage, findings)
        finally:
            load.cancel()
            await asyncio.gather(load, return_exceptions=True)
        lap("faults")
        usage.phase = "the end"
        await usage.drain(timeout=60)
        await usage.stop()
        for what in await settle(suite, None, SIZE.settle_timeout):
            findings.add("did not settle", f"at the end: {what}")
        lap("usage drained, settled")
        seen = await check_everything(suite, everyone, usage, findings)
        await check_runs_queues_and_health(suite, plan, findings)
        lap("checks")
        by_merchant: dict[str, Counter[str]] = {}
        for charge in await sandbox_charges(suite):
            by_merchant.setdefault(charge.merchant, Counter())[charge.outcome] += 1
        report = summary(
            plan,
            seen,
            by_merchant,
            usage,
            await event_counts(suite),
            suite,
            errors_in_logs(tmp_path),
            timings,
        )
    FIGURES.append(report)
    healthy_in_dunning = len(findings.by_kind.get("healthy card sent to dunning", []))
    assert not findings, (
        f"{report}\n\n{healthy_in_dunning} of {sum(c.card == HEALTHY for c in everyone)} healthy cards "
        f"sent to dunning by our own faults\n{findings.report()}\n(service logs in {tmp_path})"
    )
