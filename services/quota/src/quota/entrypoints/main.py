"""Entry point: `python -m quota.entrypoints.main`."""

from __future__ import annotations

from pathlib import Path

from billing.quota.v1 import quota_pb2_grpc
from billing_common.service import Registration, Resources, ServiceParts, Setup, run_service
from billing_common.settings import SettingsError
from quota.adapters.catalog_store import PostgresCatalog
from quota.adapters.counters import RedisCounters
from quota.adapters.drift import CounterAudit
from quota.adapters.invalidation import RedisInvalidations
from quota.adapters.tenant_store import PostgresTenants
from quota.adapters.tracking import TrackedReads
from quota.adapters.usage_ledger import PostgresUsageLedger
from quota.app.catalog import Catalog
from quota.app.entitlements import EntitlementCache, Entitlements
from quota.app.usage import Usage
from quota.entrypoints.consumers import subscription_handlers
from quota.entrypoints.servicer import ACCESS, QuotaServicer
from quota.settings import QuotaSettings

MIGRATIONS = Path(__file__).resolve().parents[3] / "migrations"
SERVICE_NAME = "billing.quota.v1.QuotaService"


def build(settings: QuotaSettings) -> Setup:
    if settings.counter_cache_entries < 0:
        raise SettingsError("QUOTA_COUNTER_CACHE_ENTRIES must not be negative")

    async def setup(r: Resources) -> ServiceParts:
        catalog_store = PostgresCatalog(r.pool, r.outbox)
        invalidations = RedisInvalidations(r.redis, settings.namespace)
        cache = EntitlementCache(r.clock, settings.entitlement_cache_ttl)
        tracked = TrackedReads(r.redis, settings.namespace, settings.counter_cache_entries)
        entitlements = Entitlements(PostgresTenants(r.pool), catalog_store, r.clock, cache, invalidations)
        counters = RedisCounters(r.redis, settings.namespace, tracked)
        usage = Usage(
            entitlements,
            catalog_store,
            counters,
            PostgresUsageLedger(r.pool, r.outbox),
            r.clock,
            settings.late_usage_grace,
        )
        servicer = QuotaServicer(
            Catalog(catalog_store, r.clock, cache, invalidations), entitlements, usage, r.clock
        )

        async def listen_for_invalidations() -> None:
            await invalidations.listen(cache.invalidate)

        return ServiceParts(
            [Registration(quota_pb2_grpc.add_QuotaServiceServicer_to_server, servicer, SERVICE_NAME, ACCESS)],
            event_handlers=subscription_handlers(entitlements),
            background=[
                listen_for_invalidations,
                tracked.track,
                CounterAudit(r.pool, r.redis, counters).run_forever,
            ],
        )

    return setup


def main() -> None:
    run_service("QUOTA", QuotaSettings, build, MIGRATIONS)


if __name__ == "__main__":
    main()
