"""The five faults, one per billing date, and how a date's run is started, faulted and waited for."""

from __future__ import annotations

import asyncio
import functools
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time

from billing.common.v1 import common_pb2 as common
from billing.quota.v1 import quota_pb2 as qpb
from billing.recurring.v1 import recurring_pb2 as rpb
from billing.tier.v1 import tier_pb2 as tpb
from billing_devtools.testing.processes import free_port
from billing_devtools.testing.servers import outage
from tests.chaos.checks import Findings, bounded
from tests.chaos.harness import START_ORDER, ChaosSuite
from tests.chaos.workload import PLAN, Customer, UsageLoad


@dataclass(frozen=True)
class ChaosSize:
    name: str
    customers_per_date: int
    # Charges per second the run's gateway takes (gateway-adapter's pacing) and usage events per second.
    charge_rate: int
    usage_rate: float
    broker_outage: float = 30.0
    database_outage: float = 20.0
    settle_timeout: float = 240.0


SIZES = {
    "reduced": ChaosSize("reduced", customers_per_date=40, charge_rate=15, usage_rate=10),
    "full": ChaosSize("full", customers_per_date=200, charge_rate=40, usage_rate=30, settle_timeout=300),
}
SIZE = SIZES[os.environ.get("BILLING_CHAOS_SIZE", "reduced")]


def tuning(size: ChaosSize) -> dict[str, dict[str, str]]:
    """Timers shortened so that a crashed pod's work is taken over in seconds rather than minutes;
    what happens is the same as with the deployed values, only sooner."""
    return {
        "recurring": {
            "RECURRING_TEST_CLOCK": "true",
            "RECURRING_SCHEDULER_INTERVAL": "1s",
            "RECURRING_WORKER_LEASE": "15s",
            "RECURRING_WORKER_IDLE_POLL": "0.2s",
            "RECURRING_WORKER_BATCH_SIZE": "20",
            "RECURRING_DEFER_DELAY": "2s",
        },
        "gateway-adapter": {
            # Slow enough that a SIGKILL finds charges in flight at the gateway.
            "GATEWAY_SANDBOX_LATENCY": "0.5s",
            "GATEWAY_RATE_LIMITS": f"sandbox-card={size.charge_rate}",
            "GATEWAY_WEBHOOK_PORT": str(free_port()),
            # Longer than any live call can take, as deployed (2 min against a 30 s gateway timeout):
            # the sandbox records its charges in our database, so an outage holds its calls too.
            "GATEWAY_PROCESSING_TIMEOUT": f"{size.database_outage + 25:.0f}s",
            "GATEWAY_UNKNOWN_CHECK_SCHEDULE": "2s,5s",
            "GATEWAY_JANITOR_INTERVAL": "1s",
        },
        "dunning": {
            "DUNNING_WORKER_POLL_INTERVAL": "0.5s",
            "DUNNING_ATTEMPT_LEASE": "10s",
            "DUNNING_UNAVAILABLE_BACKOFF": "2s",
            "DUNNING_CASE_LOCK_TTL": "5s",
        },
    }


@dataclass
class Scenario:
    key: str
    name: str
    fault: Callable[[ChaosSuite, Scenario], Awaitable[str]]
    number: int = 0
    billing_date: date = date.min
    customers: list[Customer] = field(default_factory=list)
    run_id: str = ""
    detail: str = ""
    # Seconds spent in each step: run started and a third charged, fault, settled after it, tier scan.
    steps: dict[str, float] = field(default_factory=dict)

    @property
    def merchant(self) -> str:
        return f"merchant-chaos-{self.number}"


async def _kill_recurring(suite: ChaosSuite, scenario: Scenario) -> str:
    charged = await _charges_at_sandbox(suite, scenario.merchant)
    await suite.kill("recurring")
    await suite.start("recurring")
    return f"SIGKILL after {charged} of {len(scenario.customers)} charges, restarted"


async def _kill_gateway(suite: ChaosSuite, scenario: Scenario) -> str:
    in_flight = 0

    async def charges_in_flight() -> bool:
        nonlocal in_flight
        async with suite.admin() as conn:
            in_flight = int(
                await conn.fetchval(
                    f"SELECT count(*) FROM {suite.table('gateway-adapter', 'payments')} "
                    "WHERE merchant_id = $1 AND status = 'PROCESSING'",
                    scenario.merchant,
                )
            )
        return in_flight >= 3

    await _wait(charges_in_flight, timeout=20, interval=0.02)
    await suite.kill("gateway-adapter")
    await asyncio.sleep(2)
    await suite.start("gateway-adapter")
    return f"SIGKILL with {in_flight} charges in flight, restarted after 2 s"


async def _stop_broker(suite: ChaosSuite, scenario: Scenario) -> str:
    async with outage(suite.servers.rabbitmq):
        await asyncio.sleep(SIZE.broker_outage)
    return f"RabbitMQ stopped {SIZE.broker_outage:.0f} s"


async def _stop_database(suite: ChaosSuite, scenario: Scenario) -> str:
    async with outage(suite.servers.postgres):
        await asyncio.sleep(SIZE.database_outage)
    return f"PostgreSQL stopped {SIZE.database_outage:.0f} s"


async def _flush_redis(suite: ChaosSuite, scenario: Scenario) -> str:
    await asyncio.to_thread(suite.servers.redis.flush)
    return "FLUSHALL"


def scenarios() -> list[Scenario]:
    """All of them, or those named in BILLING_CHAOS_ONLY (e.g. `database,redis`) to reproduce one."""
    every = [
        Scenario("recurring", "recurring killed mid-run", _kill_recurring),
        Scenario("gateway", "gateway-adapter killed, charges in flight", _kill_gateway),
        Scenario("broker", "broker stopped", _stop_broker),
        Scenario("database", "database stopped", _stop_database),
        Scenario("redis", "Redis flushed", _flush_redis),
    ]
    only = [key for key in os.environ.get("BILLING_CHAOS_ONLY", "").split(",") if key]
    return [s for s in every if s.key in only] if only else every


async def _charges_at_sandbox(suite: ChaosSuite, merchant: str) -> int:
    async with suite.admin() as conn:
        count: int = await conn.fetchval(
            f"SELECT count(*) FROM {suite.table('gateway-adapter', 'sandbox_charges')} "
            "WHERE merchant_id = $1",
            merchant,
        )
    return count


def _pb_date(day: date) -> common.Date:
    return common.Date(year=day.year, month=day.month, day=day.day)


async def _run_of(suite: ChaosSuite, day: date) -> rpb.Run | None:
    runs = (await suite.stub("recurring").ListRuns(rpb.ListRunsRequest(page_size=100), timeout=10)).runs
    wanted = _pb_date(day)
    return next((r for r in runs if r.billing_date == wanted and r.kind == rpb.RUN_KIND_DAILY), None)


async def _wait(check: Callable[[], Awaitable[bool]], timeout: float, interval: float = 0.2) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        try:
            if await check():
                return True
        except Exception:
            pass
        await asyncio.sleep(interval)
    return False


async def start_run(suite: ChaosSuite, scenario: Scenario, findings: Findings) -> None:
    """Move the test clock past the date's run time; the scheduler creates the run."""
    await suite.set_clock(datetime.combine(scenario.billing_date, time(3, 2), UTC))

    async def created() -> bool:
        run = await _run_of(suite, scenario.billing_date)
        scenario.run_id = run.run_id if run else ""
        return run is not None

    if not await _wait(created, timeout=60):
        earlier = [
            r
            for r in (
                await suite.stub("recurring").ListRuns(rpb.ListRunsRequest(page_size=100), timeout=30)
            ).runs
            if r.state == rpb.RUN_STATE_RUNNING
        ]
        findings.add(
            "run not created by the scheduler",
            f"{scenario.billing_date} ({scenario.name}): still RUNNING: "
            + ", ".join(f"{r.run_id} of {_date_text(r.billing_date)} {r.counts}" for r in earlier),
        )
        reply = await suite.stub("recurring").RunBilling(
            rpb.RunBillingRequest(billing_date=_pb_date(scenario.billing_date), kind=rpb.RUN_KIND_DAILY),
            timeout=60,
        )
        scenario.run_id = reply.run.run_id


def _date_text(value: common.Date) -> str:
    return f"{value.year:04d}-{value.month:02d}-{value.day:02d}"


async def unsettled(suite: ChaosSuite, scenario: Scenario | None) -> list[str]:
    """What still moves: an unfinished run, open invoices, unresolved payments, events on their way."""
    found: list[str] = []
    if scenario is not None:
        run = (await suite.stub("recurring").GetRun(rpb.GetRunRequest(run_id=scenario.run_id), timeout=5)).run
        if run.state == rpb.RUN_STATE_RUNNING:
            found.append(f"run {run.run_id} RUNNING {str(run.counts).strip()!r}")
    async with suite.admin() as conn:
        if scenario is not None:
            open_invoices = await conn.fetch(
                f"SELECT account_id FROM {suite.table('recurring', 'invoices')} "
                "WHERE merchant_id = $1 AND status = 'open'",
                scenario.merchant,
            )
            if open_invoices:
                found.append(f"open invoices of {sorted(r['account_id'] for r in open_invoices)}")
            unresolved = await conn.fetchval(
                f"SELECT count(*) FROM {suite.table('gateway-adapter', 'payments')} "
                "WHERE merchant_id = $1 AND status IN ('PROCESSING', 'UNKNOWN')",
                scenario.merchant,
            )
            if unresolved:
                found.append(f"{unresolved} payments PROCESSING or UNKNOWN at gateway-adapter")
        for service in START_ORDER:
            waiting = await conn.fetchval(
                f"SELECT count(*) FROM {suite.table(service, 'outbox')} WHERE published_at IS NULL"
            )
            if waiting:
                found.append(f"{waiting} unpublished events in {service}'s outbox")
    depths = await suite.queue_depths()
    found += [
        f"{depth} messages in {queue}" for queue, depth in depths.items() if depth and "dlq" not in queue
    ]
    return found


async def settle(suite: ChaosSuite, scenario: Scenario | None, timeout: float) -> list[str]:
    """Wait until nothing moves (twice in a row); what still moved when the time ran out."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    quiet = 0
    last: list[str] = ["not looked at yet"]
    while loop.time() < deadline:
        try:
            last = await unsettled(suite, scenario)
        except Exception as error:
            last = [f"could not look: {error!r}"]
        quiet = quiet + 1 if not last else 0
        if quiet >= 2:
            return []
        await asyncio.sleep(0.5)
    return last


async def until_mid_run(suite: ChaosSuite, scenario: Scenario, findings: Findings) -> None:
    """Until a third of the date's charges have reached the gateway."""
    third = max(1, len(scenario.customers) // 3)

    async def reached() -> bool:
        return await _charges_at_sandbox(suite, scenario.merchant) >= third

    if not await _wait(reached, timeout=120, interval=0.05):
        findings.add("run never reached a third of its charges", f"{scenario.name}: {scenario.run_id}")


async def run_scenario(suite: ChaosSuite, scenario: Scenario, usage: UsageLoad, findings: Findings) -> None:
    loop = asyncio.get_running_loop()
    usage.phase = scenario.name
    last = loop.time()

    def step(name: str) -> None:
        nonlocal last
        scenario.steps[name] = loop.time() - last
        last = loop.time()

    await start_run(suite, scenario, findings)
    await until_mid_run(suite, scenario, findings)
    step("to a third")
    scenario.detail = await scenario.fault(suite, scenario)
    step("fault")
    for what in await settle(suite, scenario, SIZE.settle_timeout):
        findings.add("did not settle", f"{scenario.name}: {what}")
    step("settled")
    await tier_scans_after(suite, scenario, findings)
    step("tier scan")


async def tier_scans_after(suite: ChaosSuite, scenario: Scenario, findings: Findings) -> None:
    """tier takes its scan lock (Redis, fenced in PostgreSQL) and finishes a scan after the fault."""
    tier = suite.stub("tier")
    scan = (
        await tier.RunScan(
            tpb.RunScanRequest(kind=tpb.SCAN_KIND_FULL, idempotency_key=f"scan-after-{scenario.key}"),
            timeout=30,
        )
    ).scan

    async def finished() -> bool:
        nonlocal scan
        scan = (await tier.GetScan(tpb.GetScanRequest(scan_id=scan.scan_id), timeout=5)).scan
        return scan.state in (tpb.SCAN_STATE_COMPLETED, tpb.SCAN_STATE_FAILED)

    await _wait(finished, timeout=120, interval=0.5)
    if scan.state != tpb.SCAN_STATE_COMPLETED:
        findings.add(
            "tier scan did not complete after the fault",
            f"{scenario.name}: scan {scan.scan_id} {tpb.ScanState.Name(scan.state)} {scan.error!r}",
        )


async def wait_until_quota_knows(suite: ChaosSuite, everyone: list[Customer]) -> None:
    """Usage is recorded for tenants quota has granted the plan to (else it is rightly denied)."""
    quota = suite.stub("quota")

    async def knows(account: str) -> bool:
        reply = await quota.GetEntitlements(qpb.GetEntitlementsRequest(tenant_id=account), timeout=30)
        return bool(reply.plan_code == PLAN)

    async def all_known() -> bool:
        return all(await bounded(functools.partial(knows, c.account) for c in everyone))

    await _wait(all_known, timeout=120, interval=1)
