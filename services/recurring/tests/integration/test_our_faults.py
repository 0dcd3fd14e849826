"""Our own failures are never the customer's: a gateway-adapter pod killed with charges in flight,
or database sessions cut on both sides, leave every healthy card paid, once, and none of them in
PAYMENT_FAILED or dunning; a run that
cannot move while gateway-adapter is down is reported stalled and does not hold up the next date."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

import pytest
from prometheus_client import REGISTRY

from billing.common.v1 import common_pb2 as common
from billing.recurring.v1 import recurring_pb2 as pb
from billing_common.settings import CommonSettings
from billing_devtools.testing.plugin import EventCollector, InfraEnv, eventually
from billing_devtools.testing.processes import RunningProcess, free_port, service_process, start_process

from .conftest import Deps, custom, pb_date, recurring_service
from .test_poisoned_items import completed_run, run_of
from .test_test_clock import at

DAY = date(2031, 5, 5)
SUBSCRIPTIONS = 30


@dataclasses.dataclass
class RestartableGateway:
    """gateway-adapter as a process that can be killed and started again on the same address."""

    settings: CommonSettings
    env: dict[str, str]
    running: RunningProcess

    async def kill(self) -> None:
        await self.running.kill()

    async def start(self) -> None:
        self.running = await start_process("gateway_adapter", "GATEWAY", self.settings, self.env)


@contextlib.asynccontextmanager
async def restartable_gateway(
    env: InfraEnv, **gateway_env: str
) -> AsyncIterator[tuple[Deps, RestartableGateway]]:
    settings = env.settings(CommonSettings, "gateway-adapter", grpc_port=free_port())
    gateway_env = {"GATEWAY_WEBHOOK_PORT": str(free_port()), **gateway_env}
    async with service_process("quota", "QUOTA", env.settings(CommonSettings, "quota")) as quota:
        gateway = RestartableGateway(
            settings, gateway_env, await start_process("gateway_adapter", "GATEWAY", settings, gateway_env)
        )
        try:
            deps = Deps(env, quota, gateway.running)
            yield deps, gateway
            await deps.assert_ledger_balances()
        finally:
            await gateway.running.terminate()


async def start_run_of_healthy_cards(stub: Any) -> pb.Run:
    """SUBSCRIPTIONS weekly cards that pay (amounts 1000, 1001, ...), all due on DAY, and DAY's run."""
    for n in range(SUBSCRIPTIONS):
        await stub.CreateSubscription(custom(f"card-{n}", 1000 + n, common.BILLING_FREQUENCY_WEEKLY, DAY))
    reply = await stub.RunBilling(pb.RunBillingRequest(billing_date=pb_date(DAY), kind=pb.RUN_KIND_DAILY))
    run: pb.Run = reply.run
    return run


async def all_paid(deps: Deps) -> bool:
    rows = await deps.recurring_rows("SELECT status FROM invoices")
    return len(rows) == SUBSCRIPTIONS and all(r["status"] == "paid" for r in rows)


async def assert_each_card_paid_once_by_the_run(deps: Deps, events: EventCollector) -> None:
    assert events.of_type("invoice.payment_failed") == []
    assert events.of_type("subscription.past_due") == []
    approved = await deps.sandbox_charges("outcome = 'approved'")
    assert sorted(c["amount_minor"] for c in approved) == [1000 + n for n in range(SUBSCRIPTIONS)]
    items = await deps.recurring_rows("SELECT status, count(*) AS n FROM work_items GROUP BY status")
    assert [(r["status"], r["n"]) for r in items] == [("charged", SUBSCRIPTIONS)]


@pytest.mark.timeout(240)
async def test_a_gateway_adapter_killed_mid_run_sends_no_healthy_card_to_dunning(env: InfraEnv) -> None:
    async with (
        restartable_gateway(
            env,
            # Charges stay in flight long enough to be cut off; a crashed call is looked into soon.
            GATEWAY_SANDBOX_LATENCY="0.5s",
            GATEWAY_PROCESSING_TIMEOUT="2s",
            GATEWAY_IN_FLIGHT_WAIT="1s",
            GATEWAY_JANITOR_INTERVAL="0.2s",
        ) as (deps, gateway),
        EventCollector(env.infra.amqp_url, env.exchange, ["invoice.*", "subscription.*"]) as events,
    ):
        # The run tries a deferred item again after gateway-adapter's janitor has looked into the
        # charges the dead pod left behind, as it does with the default delays.
        settings = deps.recurring_settings(
            worker_lease=timedelta(seconds=5), defer_delay=timedelta(seconds=3)
        )
        async with recurring_service(settings) as recurring:
            stub = recurring.operator
            run = await start_run_of_healthy_cards(stub)

            async def some_charged() -> bool:
                return len(await deps.sandbox_charges()) >= 5

            await eventually(some_charged, timeout=30, interval=0.01)
            await gateway.kill()
            await gateway.start()

            await eventually(lambda: all_paid(deps), timeout=120, interval=0.2)
            done = await completed_run(stub, DAY)
            assert done.run_id == run.run_id
            assert (done.counts.charged, done.counts.failed, done.counts.parked) == (SUBSCRIPTIONS, 0, 0)

        await assert_each_card_paid_once_by_the_run(deps, events)
        failed = await deps.recurring_rows(
            "SELECT count(*) AS n FROM transactions WHERE status <> 'succeeded'"
        )
        assert failed[0]["n"] == 0  # every occurrence paid by its first attempt's key


async def cut_sessions(deps: Deps, roles: list[str], seconds: float) -> int:
    """Database blips: every session of these services' roles is ended, again and again."""
    admin = await deps.admin()
    ended = 0
    try:
        deadline = asyncio.get_running_loop().time() + seconds
        while asyncio.get_running_loop().time() < deadline:
            ended += len(
                await admin.fetch(
                    """SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                       WHERE usename = ANY($1::text[]) AND pid <> pg_backend_pid()""",
                    roles,
                )
            )
            await asyncio.sleep(0.2)
    finally:
        await admin.close()
    return ended


@pytest.mark.timeout(240)
async def test_database_blips_on_both_sides_mid_run_send_no_healthy_card_to_dunning(env: InfraEnv) -> None:
    async with (
        restartable_gateway(
            env,
            GATEWAY_SANDBOX_LATENCY="0.3s",
            GATEWAY_PROCESSING_TIMEOUT="2s",
            GATEWAY_IN_FLIGHT_WAIT="1s",
            GATEWAY_JANITOR_INTERVAL="0.2s",
        ) as (deps, _),
        EventCollector(env.infra.amqp_url, env.exchange, ["invoice.*", "subscription.*"]) as events,
    ):
        settings = deps.recurring_settings(worker_lease=timedelta(seconds=5))
        async with recurring_service(settings) as recurring:
            stub = recurring.operator
            run = await start_run_of_healthy_cards(stub)

            async def some_charged() -> bool:
                return len(await deps.sandbox_charges()) >= 3

            await eventually(some_charged, timeout=30, interval=0.01)
            ended = await cut_sessions(deps, [deps.recurring_schema, deps.gateway_schema], seconds=3)
            assert ended > 0

            await eventually(lambda: all_paid(deps), timeout=120, interval=0.2)
            done = await completed_run(stub, DAY)
            assert done.run_id == run.run_id
            assert (done.counts.charged, done.counts.failed, done.counts.parked) == (SUBSCRIPTIONS, 0, 0)

        await assert_each_card_paid_once_by_the_run(deps, events)


def stalled_gauge(kind: str) -> float | None:
    return REGISTRY.get_sample_value("recurring_runs_stalled", {"kind": kind})


@pytest.mark.timeout(180)
async def test_a_run_that_cannot_move_is_reported_stalled_and_the_next_date_runs_anyway(
    env: InfraEnv,
) -> None:
    async with (
        restartable_gateway(env) as (deps, gateway),
        EventCollector(env.infra.amqp_url, env.exchange, ["run.*", "invoice.*"]) as events,
    ):
        settings = deps.recurring_settings(
            test_clock=True, max_catch_up_days=3, run_stalled_after=timedelta(hours=1)
        )
        async with recurring_service(settings) as recurring:
            stub = recurring.operator
            await stub.SetClock(
                pb.SetClockRequest(now=at(datetime.combine(DAY - timedelta(days=1), time(12), UTC)))
            )
            await stub.CreateSubscription(custom("first", 1500, common.BILLING_FREQUENCY_WEEKLY, DAY))
            await stub.CreateSubscription(
                custom("second", 1600, common.BILLING_FREQUENCY_WEEKLY, DAY + timedelta(days=1))
            )
            await gateway.kill()  # gateway-adapter is down: no charge gets an answer

            await stub.SetClock(pb.SetClockRequest(now=at(datetime.combine(DAY, time(4), UTC))))

            async def deferred() -> bool:
                found = await run_of(stub, DAY, pb.RUN_KIND_DAILY)
                return found is not None and found.counts.deferred == 1

            await eventually(deferred, timeout=30)
            assert stalled_gauge("daily") == 0

            await stub.SetClock(pb.SetClockRequest(now=at(datetime.combine(DAY, time(5, 30), UTC))))
            [stalled] = await events.wait_for("run.stalled", timeout=30)
            first = await run_of(stub, DAY, pb.RUN_KIND_DAILY)
            assert first is not None and stalled.run_id == first.run_id
            assert stalled.open_items == 1 and stalled.counts.deferred == 1
            assert stalled.last_progress_at.ToDatetime(tzinfo=UTC) == datetime.combine(DAY, time(4), UTC)
            await eventually(lambda: stalled_gauge("daily") == 1, timeout=10)

            # The next date's run is created although the stalled one is still RUNNING.
            await stub.SetClock(
                pb.SetClockRequest(now=at(datetime.combine(DAY + timedelta(days=1), time(4), UTC)))
            )

            async def next_date() -> pb.Run | None:
                return await run_of(stub, DAY + timedelta(days=1), pb.RUN_KIND_DAILY)

            await eventually(next_date, timeout=30)
            still = await run_of(stub, DAY, pb.RUN_KIND_DAILY)
            assert still is not None and still.state == pb.RUN_STATE_RUNNING

            # Once gateway-adapter is back, both runs finish with the keys they wrote, and nobody
            # went to dunning for the outage.
            await gateway.start()
            await completed_run(stub, DAY)
            await completed_run(stub, DAY + timedelta(days=1))
            await eventually(lambda: stalled_gauge("daily") == 0, timeout=10)
        assert events.of_type("invoice.payment_failed") == []
        charged = await deps.sandbox_charges()
        assert sorted(c["amount_minor"] for c in charged) == [1500, 1600]
