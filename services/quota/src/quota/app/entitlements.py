"""Per-tenant entitlements: the subscription projection, overrides, grants, add-ons, resolution.

Resolutions are cached in the process (the hot path must not touch PostgreSQL) and dropped when
anything they depend on changes: a subscription event, a plan change, an override, a grant or an
add-on, here or in another process (broadcast through `Invalidations`). A short TTL is the safety
net for a missed broadcast, and a resolution also ends by itself when a grant in it expires.
A busy tenant's resolution is reloaded in the background in the last fifth of its TTL, so checks
do not queue behind its queries when it expires, and concurrent misses share one load.

Read-only mode: while PostgreSQL is unreachable, a tenant's last resolution keeps being served
(until a grant in it expires) and a reload is tried again every `STALE_RETRY`, in the background,
so checks go on answering from memory and Redis; nothing that needs the database does.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import asyncpg

from billing_common.clock import Clock
from billing_common.errors import FailedPrecondition, InvalidArgument, NotFound, Violations
from billing_common.faults import is_dependency_failure
from billing_common.idempotency import IdempotencyKey
from quota.app.ports import CatalogStore, Invalidations, TenantStore
from quota.domain.catalog import KEY_PATTERN, Behaviour, Plan
from quota.domain.resolution import Grant, Override, Resolution, SubscriptionView, pick_subscription, resolve

log = logging.getLogger(__name__)
REFRESH_AHEAD = 0.2  # of the TTL
STALE_RETRY = timedelta(seconds=1)


class EntitlementCache:
    """Resolutions by tenant. How long one is kept is wall time (a monotonic clock): the suite's
    test clock leaps a day in a second, and a lifetime on it would expire every entry at each step.
    What a resolution says (its windows, a grant's end) follows the service's clock."""

    def __init__(self, ttl: timedelta, wall: Callable[[], float] = time.monotonic) -> None:
        self._ttl = ttl.total_seconds()
        self._wall = wall
        self._entries: dict[str, tuple[Resolution, float, float]] = {}  # + refresh at, expiry (wall)
        self.generation = 0  # bumped on every invalidation, so a resolution built meanwhile is not kept

    def get(self, tenant_id: str, now: datetime) -> tuple[Resolution | None, bool]:
        """The cached resolution at `now`, and whether it is time to load it again."""
        entry = self._entries.get(tenant_id)
        if entry is None:
            return None, True
        resolution, refresh, expires = entry
        ticks = self._wall()
        if ticks >= expires or not _still_valid(resolution, now):
            return None, True  # kept as the last known resolution, for when the database is down
        return resolution, ticks >= refresh

    def last_known(self, tenant_id: str, now: datetime) -> Resolution | None:
        """The last resolution loaded, expired or not, unless a grant in it has ended since."""
        entry = self._entries.get(tenant_id)
        if entry is None:
            return None
        return entry[0] if _still_valid(entry[0], now) else None

    def keep_serving(self, resolution: Resolution, generation: int) -> None:
        """Serve `resolution` again (the database is down), and try a reload after `STALE_RETRY`."""
        if generation != self.generation:
            return
        ticks, retry = self._wall(), STALE_RETRY.total_seconds()
        self._entries[resolution.tenant_id] = (resolution, ticks + retry, ticks + max(self._ttl, 2 * retry))

    def put(self, resolution: Resolution, generation: int) -> None:
        if generation != self.generation:
            return
        ticks = self._wall()
        refresh, expires = ticks + self._ttl * (1 - REFRESH_AHEAD), ticks + self._ttl
        self._entries[resolution.tenant_id] = (resolution, refresh, expires)

    def invalidate(self, tenant_id: str | None) -> None:
        self.generation += 1
        if tenant_id is None:
            self._entries.clear()
        else:
            self._entries.pop(tenant_id, None)

    def clear(self) -> None:
        self.invalidate(None)


def _still_valid(resolution: Resolution, now: datetime) -> bool:
    return resolution.valid_until is None or now < resolution.valid_until


def _check_tenant_and_key(violations: Violations, tenant_id: str, key: str) -> None:
    violations.check(0 < len(tenant_id) <= 200, "tenant_id", "is required (1-200 characters)")
    violations.check(bool(KEY_PATTERN.match(key)), "key", "is not a valid entitlement key")


@dataclass(frozen=True)
class GrantRequest:
    tenant_id: str
    key: str
    quantity: int
    expires_at: datetime | None


class Entitlements:
    def __init__(
        self,
        tenants: TenantStore,
        catalog: CatalogStore,
        clock: Clock,
        cache: EntitlementCache,
        invalidations: Invalidations,
    ) -> None:
        self._tenants = tenants
        self._catalog = catalog
        self._clock = clock
        self._cache = cache
        self._invalidations = invalidations
        self._loading: dict[str, tuple[int, asyncio.Future[Resolution]]] = {}
        self._batches: set[asyncio.Future[None]] = set()  # loads under way, kept from the collector

    async def resolution(self, tenant_id: str) -> Resolution:
        return self.known(tenant_id, self._clock.now()) or await self._load([tenant_id])[tenant_id]

    async def resolutions(self, tenant_ids: Iterable[str]) -> dict[str, Resolution]:
        """Each tenant's resolution: the cached ones at once, the others loaded together."""
        now = self._clock.now()
        found: dict[str, Resolution] = {}
        missing: list[str] = []
        for tenant_id in dict.fromkeys(tenant_ids):
            known = self.known(tenant_id, now)
            if known is None:
                missing.append(tenant_id)
            else:
                found[tenant_id] = known
        for tenant_id, loading in self._load(missing).items():
            found[tenant_id] = await loading
        return found

    def known(self, tenant_id: str, now: datetime) -> Resolution | None:
        """The cached resolution, without waiting; a due reload starts in the background."""
        cached, due = self._cache.get(tenant_id, now)
        if cached is not None and due and tenant_id not in self._loading:
            self._load([tenant_id])[tenant_id].add_done_callback(_log_failure)
        return cached

    def _load(self, tenant_ids: Sequence[str]) -> dict[str, asyncio.Future[Resolution]]:
        """One load per tenant at a time, the tenants not being loaded yet in one batch; a load
        begun before an invalidation is not joined."""
        generation = self._cache.generation
        futures: dict[str, asyncio.Future[Resolution]] = {}
        batch: dict[str, asyncio.Future[Resolution]] = {}
        loop = asyncio.get_running_loop()
        for tenant_id in tenant_ids:
            loading = self._loading.get(tenant_id)
            if loading is not None and loading[0] == generation:
                futures[tenant_id] = loading[1]
            else:
                futures[tenant_id] = batch[tenant_id] = loop.create_future()
        if not batch:
            return futures

        async def load() -> None:
            try:
                resolved = await self._resolve(list(batch))
            except Exception as error:
                for tenant_id, future in batch.items():
                    last = self._cache.last_known(tenant_id, self._clock.now())
                    if last is None or not is_dependency_failure(error):
                        future.set_exception(error)
                        continue
                    log.debug("entitlements served from memory", extra={"tenant_id": tenant_id})
                    self._cache.keep_serving(last, generation)
                    future.set_result(last)
                return
            for tenant_id, future in batch.items():
                self._cache.put(resolved[tenant_id], generation)
                future.set_result(resolved[tenant_id])

        task = asyncio.ensure_future(load())
        self._batches.add(task)
        task.add_done_callback(self._batches.discard)
        for tenant_id, future in batch.items():
            self._loading[tenant_id] = (generation, future)
            future.add_done_callback(self._done_loading(tenant_id))
        return futures

    def _done_loading(self, tenant_id: str) -> Callable[[asyncio.Future[Resolution]], None]:
        def done(future: asyncio.Future[Resolution]) -> None:
            if self._loading.get(tenant_id, (0, None))[1] is future:
                del self._loading[tenant_id]

        return done

    async def _resolve(self, tenant_ids: Sequence[str]) -> dict[str, Resolution]:
        now = self._clock.now()
        standings = await self._tenants.standings(tenant_ids, now)
        free_plan = await self._catalog.free_plan()
        plans: dict[tuple[str, int], Plan | None] = {}
        resolved: dict[str, Resolution] = {}
        for tenant_id in tenant_ids:
            standing = standings[tenant_id]
            subscription = pick_subscription(standing.subscriptions)
            plan = None
            if subscription is not None and subscription.plan_code:
                ref = (subscription.plan_code, subscription.plan_version)
                if ref not in plans:
                    plans[ref] = await self._catalog.get_plan(*ref)
                plan = plans[ref]
            resolved[tenant_id] = resolve(
                tenant_id,
                subscription,
                plan,
                standing.add_ons,
                standing.overrides,
                standing.grants,
                free_plan,
                now,
            )
        return resolved

    async def _changed(self, tenant_id: str) -> None:
        self._cache.invalidate(tenant_id)
        await self._invalidations.publish(tenant_id)

    async def apply_snapshot(self, conn: asyncpg.Connection, view: SubscriptionView) -> None:
        """Project one subscription snapshot (in the event's inbox transaction)."""
        applied = await self._tenants.within(conn).save_snapshot(view)
        if applied is not None:
            await self._changed(view.tenant_id)

    async def set_override(
        self, tenant_id: str, key: str, limit: int, unlimited: bool, behaviour: Behaviour | None, remove: bool
    ) -> Resolution:
        violations = Violations()
        _check_tenant_and_key(violations, tenant_id, key)
        if not remove:
            violations.check(limit >= 0, "limit", "must not be negative")
            violations.check(not (unlimited and limit), "limit", "must be 0 when unlimited is set")
        violations.raise_if_any()
        override = None if remove else Override(tenant_id, key, None if unlimited else limit, behaviour)
        await self._tenants.set_override(override, tenant_id, key)
        await self._changed(tenant_id)
        return await self.resolution(tenant_id)

    async def create_grant(self, request: GrantRequest, idem: IdempotencyKey) -> Grant:
        now = self._clock.now()
        violations = Violations()
        _check_tenant_and_key(violations, request.tenant_id, request.key)
        violations.check(request.quantity > 0, "quantity", "must be positive")
        violations.check(
            request.expires_at is not None and request.expires_at > now, "expires_at", "must be in the future"
        )
        violations.check(0 < len(idem.key) <= 200, "idempotency_key", "is required (1-200 characters)")
        violations.raise_if_any()
        assert request.expires_at is not None
        grant = Grant(
            str(uuid.uuid4()), request.tenant_id, request.key, request.quantity, request.expires_at, now
        )
        stored = await self._tenants.create_grant(grant, idem)
        await self._changed(request.tenant_id)
        return stored

    async def attach_add_on(self, tenant_id: str, code: str, attached: bool) -> Resolution:
        if not 0 < len(tenant_id) <= 200:
            raise InvalidArgument.of("tenant_id", "is required (1-200 characters)")
        if attached and code not in {a.code for a in await self._catalog.list_add_ons()}:
            raise NotFound(f"add-on {code} does not exist")
        resolution = await self.resolution(tenant_id)
        if attached and resolution.denied:
            raise FailedPrecondition(f"tenant {tenant_id} has no active subscription to add to")
        await self._tenants.attach_add_on(tenant_id, code, attached, self._clock.now())
        await self._changed(tenant_id)
        return await self.resolution(tenant_id)


def _log_failure(future: asyncio.Future[Resolution]) -> None:
    error = None if future.cancelled() else future.exception()
    if error is None:
        return
    if is_dependency_failure(error):
        log.warning("entitlements could not be reloaded: %s", type(error).__name__)
    else:
        log.warning("entitlements could not be reloaded in the background", exc_info=error)
