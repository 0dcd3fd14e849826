"""Entry point: `python -m tier.entrypoints.main`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

from workos import AsyncWorkOSClient

from billing.tier.v1 import tier_pb2_grpc
from billing_common.paging import PageTokens
from billing_common.service import Background, Lifespan, Registration, Resources, ServiceParts, run_service
from tier.adapters.api_registry import ApiClientRegistryProvider
from tier.adapters.estate_store import PostgresEstate
from tier.adapters.metrics import PrometheusTierMetrics
from tier.adapters.scan_store import PostgresScans, unfinished_scans
from tier.adapters.tier_store import PostgresTiers
from tier.adapters.workos_sso import WorkOsSsoProvider
from tier.app.accounts import Accounts
from tier.app.history import History
from tier.app.ports import SignalProvider
from tier.app.scans import Scans
from tier.domain.rules import DEFAULT_RULE_SET, Evaluator, RuleSet
from tier.domain.scans import ScanKind
from tier.entrypoints.background import ScanScheduler, run_worker
from tier.entrypoints.servicer import ACCESS, TierServicer
from tier.settings import TierSettings

MIGRATIONS = Path(__file__).resolve().parents[3] / "migrations"
SERVICE_NAME = "billing.tier.v1.TierService"


def rule_set_of(settings: TierSettings) -> RuleSet:
    return DEFAULT_RULE_SET if settings.rules_file is None else settings.rules_file.rule_set


def schedules_of(settings: TierSettings) -> dict[ScanKind, str]:
    configured = {
        ScanKind.FULL: settings.scan_schedule_full,
        ScanKind.SSO: settings.scan_schedule_sso,
        ScanKind.API: settings.scan_schedule_api,
    }
    return {kind: expression for kind, expression in configured.items() if expression is not None}


def build(settings: TierSettings) -> Lifespan:
    rule_set = rule_set_of(settings)
    schedules = schedules_of(settings)
    pages = PageTokens.from_settings(settings)

    @asynccontextmanager
    async def lifespan(r: Resources) -> AsyncIterator[ServiceParts]:
        async with AsyncExitStack() as opened:
            metrics = PrometheusTierMetrics()
            accounts = Accounts(PostgresEstate(r.pool), metrics)
            await accounts.rebuild()
            providers: list[SignalProvider] = []
            if settings.workos_api_key:
                workos = AsyncWorkOSClient(
                    api_key=settings.workos_api_key,
                    base_url=settings.workos_base_url or None,
                    request_timeout=max(1, int(settings.provider_timeout.total_seconds())),
                )
                providers.append(WorkOsSsoProvider(workos))
                opened.push_async_callback(workos.close)
            if settings.api_registry_url:
                providers.append(
                    ApiClientRegistryProvider(
                        settings.api_registry_url, settings.api_registry_token, settings.provider_timeout
                    )
                )
            tiers = PostgresTiers(r.pool, r.outbox)
            scans = Scans(
                accounts,
                tiers,
                PostgresScans(r.pool),
                r.locks,
                providers,
                Evaluator(rule_set),
                r.clock,
                metrics,
                lock_ttl=settings.scan_lock_ttl,
                write_batch=settings.scan_write_batch,
            )
            servicer = TierServicer(accounts, scans, History(accounts, tiers), pages)

            scheduler = ScanScheduler(scans, schedules, r.clock)

            async def worker() -> None:
                await run_worker(scans, settings.worker_poll_interval)

            yield ServiceParts(
                [
                    Registration(
                        tier_pb2_grpc.add_TierServiceServicer_to_server, servicer, SERVICE_NAME, ACCESS
                    )
                ],
                background=[
                    Background(scheduler.run),
                    Background(worker),
                    # Other pods' writes merged into this pod's model, so its reads stay current.
                    Background.every(
                        settings.model_refresh_interval, accounts.refresh, "model refresh", wait_first=True
                    ),
                ],
                due_work=[scheduler.due, unfinished_scans(r.pool)],
            )

    return lifespan


def main() -> None:
    run_service("TIER", TierSettings, build, MIGRATIONS)


if __name__ == "__main__":
    main()
