"""Entry point: `python -m recurring.entrypoints.main`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import grpc

from billing.recurring.v1 import recurring_pb2_grpc
from billing_common.grpc_client import open_channel
from billing_common.paging import PageTokens
from billing_common.service import Background, Lifespan, Registration, Resources, ServiceParts, run_service
from billing_common.settings import SettingsError
from billing_common.suite_clock import pause
from recurring.adapters.clients import GatewayClient, QuotaClient
from recurring.adapters.coordination import RedisOutageCounter
from recurring.adapters.events import EventMessages
from recurring.adapters.metrics import REFRESH, PrometheusRecurringMetrics, RunMetrics, run_work
from recurring.adapters.store import PostgresStore
from recurring.adapters.tracing import ChargeSpans
from recurring.adapters.views import Views
from recurring.app.invoices import Invoices
from recurring.app.runs import Runs, Schedule
from recurring.app.subscriptions import Subscriptions
from recurring.app.worker import Worker, WorkerConfig
from recurring.domain.runs import RunKind
from recurring.domain.settlement import ExhaustionPolicy, Rules
from recurring.entrypoints.batches import BatchLoops, LoopConfig
from recurring.entrypoints.consumers import event_handlers
from recurring.entrypoints.servicer import ACCESS, RecurringServicer
from recurring.settings import RecurringSettings

MIGRATIONS = Path(__file__).resolve().parents[3] / "migrations"
SERVICE_NAME = "billing.recurring.v1.RecurringService"


def build(settings: RecurringSettings) -> Lifespan:
    zone = settings.billing_time_zone
    if settings.item_max_failures < 1:
        raise SettingsError("RECURRING_ITEM_MAX_FAILURES must be at least 1")
    schedule = Schedule(
        zone=zone,
        times={
            RunKind.DAILY: settings.daily_run_at,
            RunKind.MONTHLY: settings.monthly_run_at,
        },
        max_catch_up_days=settings.max_catch_up_days,
        lock_ttl=settings.run_lock_ttl,
        stalled_after=settings.run_stalled_after,
    )
    pages = PageTokens.from_settings(settings)
    rules = Rules(
        settings.minimum_charge_minor,
        settings.item_max_failures,
        settings.defer_delay,
        settings.unreachable_halt_threshold,
    )

    def parts(
        r: Resources, quota_channel: grpc.aio.Channel, gateway_channel: grpc.aio.Channel
    ) -> ServiceParts:
        clock = r.clock
        store = PostgresStore(r.pool, r.outbox, EventMessages(zone))
        quota = QuotaClient(quota_channel, settings.charge_timeout, zone)
        outages = RedisOutageCounter(r.redis, settings.namespace)
        metrics = PrometheusRecurringMetrics()
        gateway = GatewayClient(gateway_channel, settings.charge_timeout, metrics)
        subscriptions = Subscriptions(store, quota, clock, zone)
        runs = Runs(store, r.locks, outages, clock, schedule, metrics)
        invoices = Invoices(
            store,
            gateway,
            clock,
            ExhaustionPolicy(settings.exhausted_default_action, settings.exhausted_cancel_merchants),
            rules,
        )
        worker = Worker(
            store,
            runs,
            gateway,
            quota,
            outages,
            clock,
            WorkerConfig(settings.worker_batch_size, settings.worker_lease, rules, zone),
            metrics,
            ChargeSpans(),
        )
        loops = BatchLoops(
            worker,
            runs.work_queued,
            LoopConfig(settings.worker_concurrent_batches, settings.worker_idle_poll, settings.worker_jitter),
        )
        servicer = RecurringServicer(
            subscriptions, runs, invoices, Views(store), clock, r.clock_control, pages
        )

        async def scheduler() -> None:
            while True:
                await runs.watch_progress()
                await runs.catch_up()
                await pause(clock, settings.scheduler_interval.total_seconds())

        return ServiceParts(
            [
                Registration(
                    recurring_pb2_grpc.add_RecurringServiceServicer_to_server, servicer, SERVICE_NAME, ACCESS
                )
            ],
            event_handlers=event_handlers(subscriptions, invoices),
            background=[
                Background(scheduler),
                Background(loops.run_forever, drain=loops.drain),
                Background.every(REFRESH, RunMetrics(r.pool).refresh, "run metrics refresh"),
            ],
            # A charge in flight when SIGTERM comes gets its whole timeout to answer.
            drain_at_least=settings.charge_timeout,
            due_work=[run_work(r.pool, schedule.times, zone)],
        )

    @asynccontextmanager
    async def lifespan(r: Resources) -> AsyncIterator[ServiceParts]:
        async with (
            open_channel(settings.quota_addr, r.outgoing_token) as quota_channel,
            open_channel(settings.gateway_adapter_addr, r.outgoing_token) as gateway_channel,
        ):
            yield parts(r, quota_channel, gateway_channel)

    return lifespan


def main() -> None:
    run_service("RECURRING", RecurringSettings, build, MIGRATIONS)


if __name__ == "__main__":
    main()
