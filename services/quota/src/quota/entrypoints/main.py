"""Entry point: `python -m quota.entrypoints.main`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from billing.quota.v1 import quota_pb2_grpc
from billing_common.paging import PageTokens
from billing_common.service import (
    Background,
    Dependency,
    Lifespan,
    Registration,
    Resources,
    ServiceParts,
    run_service,
)
from billing_common.settings import SettingsError
from quota.adapters.catalog_store import PostgresCatalog
from quota.adapters.cluster import ClusterReads
from quota.adapters.counters import CounterReads, RedisCounters
from quota.adapters.drift import AUDIT_INTERVAL, CounterAudit
from quota.adapters.invalidation import RedisInvalidations
from quota.adapters.metrics import USAGE_METRICS
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


def build(settings: QuotaSettings) -> Lifespan:
    if settings.counter_cache_entries < 0:
        raise SettingsError("QUOTA_COUNTER_CACHE_ENTRIES must not be negative")
    pages = PageTokens.from_settings(settings)

    @asynccontextmanager
    async def lifespan(r: Resources) -> AsyncIterator[ServiceParts]:
        async with AsyncExitStack() as opened:
            tracking: list[Background] = []
            redis: Redis | RedisCluster = r.redis
            reads: CounterReads
            if settings.redis_cluster:
                # Entering learns the slots from the node REDIS_URL names; leaving closes the cluster.
                redis = await opened.enter_async_context(RedisCluster.from_url(settings.redis_url))
                reads = ClusterReads(redis)
            else:
                tracked = TrackedReads(r.redis, settings.namespace, settings.counter_cache_entries)
                reads = tracked
                tracking.append(Background(tracked.track))
            catalog_store = PostgresCatalog(r.pool, r.outbox)
            invalidations = RedisInvalidations(redis, settings.namespace)
            cache = EntitlementCache(settings.entitlement_cache_ttl)
            tenants = PostgresTenants(r.pool)
            entitlements = Entitlements(tenants, catalog_store, r.clock, cache, invalidations)
            counters = RedisCounters(redis, settings.namespace, reads, USAGE_METRICS)
            usage = Usage(
                entitlements,
                catalog_store,
                tenants,
                counters,
                PostgresUsageLedger(r.pool, r.outbox),
                r.clock,
                settings.late_usage_grace,
                USAGE_METRICS,
            )
            servicer = QuotaServicer(
                Catalog(catalog_store, r.clock, cache, invalidations), entitlements, usage, r.clock, pages
            )

            async def listen_for_invalidations() -> None:
                await invalidations.listen(cache.invalidate)

            yield ServiceParts(
                [
                    Registration(
                        quota_pb2_grpc.add_QuotaServiceServicer_to_server, servicer, SERVICE_NAME, ACCESS
                    )
                ],
                event_handlers=subscription_handlers(entitlements),
                background=[
                    Background(listen_for_invalidations),
                    *tracking,
                    Background(usage.settle_forever),
                    Background.every(
                        AUDIT_INTERVAL,
                        CounterAudit(r.pool, redis, counters, USAGE_METRICS).audit,
                        "counter audit",
                        wait_first=True,
                    ),
                ],
                # CheckQuota answers from Redis and the entitlements it holds, also while PostgreSQL is
                # down (read-only mode): a pod leaves the endpoints only when it cannot reach Redis.
                serving_needs=frozenset({Dependency.REDIS}),
            )

    return lifespan


def main() -> None:
    run_service("QUOTA", QuotaSettings, build, MIGRATIONS)


if __name__ == "__main__":
    main()
