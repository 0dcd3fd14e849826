"""Entry point: `python -m dunning.entrypoints.main`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

from billing.dunning.v1 import dunning_pb2_grpc
from billing_common.grpc_client import open_channel
from billing_common.paging import PageTokens
from billing_common.service import Background, Lifespan, Registration, Resources, ServiceParts, run_service
from dunning.adapters.metrics import MetricsRefresher, PrometheusCaseMetrics
from dunning.adapters.recurring_client import GrpcRecurring
from dunning.adapters.store import PostgresCases, due_cases
from dunning.app.cases import CaseService
from dunning.app.policies import Policies
from dunning.app.statistics import OutcomeStatistics
from dunning.app.worker import AttemptWorker, WorkerConfig
from dunning.entrypoints.consumers import event_handlers
from dunning.entrypoints.servicer import ACCESS, DunningServicer
from dunning.settings import DunningSettings

MIGRATIONS = Path(__file__).resolve().parents[3] / "migrations"
SERVICE_NAME = "billing.dunning.v1.DunningService"


def worker_config(settings: DunningSettings) -> WorkerConfig:
    return WorkerConfig(
        batch_size=settings.worker_batch_size,
        concurrency=settings.worker_concurrency,
        lease=settings.attempt_lease,
        case_lock_ttl=settings.case_lock_ttl,
        poll_interval=settings.worker_poll_interval,
        pending_recheck=settings.pending_recheck,
        unavailable_backoff=settings.unavailable_backoff,
    )


def build(settings: DunningSettings) -> Lifespan:
    pages = PageTokens.from_settings(settings)

    @asynccontextmanager
    async def lifespan(r: Resources) -> AsyncIterator[ServiceParts]:
        async with AsyncExitStack() as opened:
            metrics = PrometheusCaseMetrics()
            store = PostgresCases(r.pool, r.outbox, metrics)
            statistics = OutcomeStatistics(r.clock, settings.statistics_refresh, settings.statistics_window)
            cases = CaseService(store, statistics, r.clock)
            servicer = DunningServicer(cases, Policies(store, r.clock), pages)
            gauges = MetricsRefresher(r.pool, r.clock)
            background = [Background.every(settings.metrics_refresh, gauges.refresh, "metrics refresh")]
            if settings.worker_enabled:
                channel = await opened.enter_async_context(
                    open_channel(settings.recurring_addr, r.outgoing_token)
                )
                worker = AttemptWorker(
                    store,
                    GrpcRecurring(channel, settings.attempt_timeout),
                    r.locks,
                    statistics,
                    r.clock,
                    worker_config(settings),
                    metrics,
                )
                background.append(Background(worker.run_forever))
            yield ServiceParts(
                [
                    Registration(
                        dunning_pb2_grpc.add_DunningServiceServicer_to_server, servicer, SERVICE_NAME, ACCESS
                    )
                ],
                event_handlers=event_handlers(cases, r.clock),
                background=background,
                due_work=[due_cases(r.pool)] if settings.worker_enabled else [],
            )

    return lifespan


def main() -> None:
    run_service("DUNNING", DunningSettings, build, MIGRATIONS)


if __name__ == "__main__":
    main()
