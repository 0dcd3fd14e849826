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
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

import asyncpg

from billing_common.clock import Clock
from billing_common.errors import FailedPrecondition, InvalidArgument, NotFound, Violations
from billing_common.faults import is_dependency_failure
from billing_common.idempotency import IdempotencyKey
from quota.app.ports import CatalogStore, Invalidations, TenantStore
from quota.domain.catalog import KEY_PATTERN, Behaviour
from quota.domain.resolution import Grant, Override, Resolution, SubscriptionView, pick_subscription, resolve

log = logging.getLogger(__name__)
REFRESH_AHEAD = 0.2  # of the TTL
STALE_RETRY = timedelta(seconds=1)


class EntitlementCache:
    def __init__(self, clock: Clock, ttl: timedelta) -> None:
        self._clock = clock
        self._ttl = ttl
        self._entries: dict[str, tuple[Resolution, datetime, datetime]] = {}  # + refresh at, expiry
        self.generation = 0  # bumped on every invalidation, so a resolution built meanwhile is not kept

    def get(self, tenant_id: str, now: datetime) -> tuple[Resolution | None, bool]:
        """The cached resolution at `now`, and whether it is time to load it again."""
        entry = self._entries.get(tenant_id)
        if entry is None:
            return None, True
        if now >= entry[2]:
            return None, True  # kept as the last known resolution, for when the database is down
        return entry[0], now >= entry[1]

    def last_known(self, tenant_id: str, now: datetime) -> Resolution | None:
        """The last resolution loaded, expired or not, unless a grant in it has ended since."""
        entry = self._entries.get(tenant_id)
        if entry is None:
            return None
        valid_until = entry[0].valid_until
        return entry[0] if valid_until is None or now < valid_until else None

    def keep_serving(self, resolution: Resolution, generation: int) -> None:
        """Serve `resolution` again (the database is down), and try a reload after `STALE_RETRY`."""
        if generation != self.generation:
            return
        now = self._clock.now()
        expires = now + max(self._ttl, 2 * STALE_RETRY)
        if resolution.valid_until is not None:
            expires = min(expires, resolution.valid_until)
        self._entries[resolution.tenant_id] = (resolution, now + STALE_RETRY, expires)

    def put(self, resolution: Resolution, generation: int) -> None:
        if generation != self.generation:
            return
        now = self._clock.now()
        refresh, expires = now + self._ttl * (1 - REFRESH_AHEAD), now + self._ttl
        if resolution.valid_until is not None:
            expires = min(expires, resolution.valid_until)
        self._entries[resolution.tenant_id] = (resolution, refresh, expires)

    def invalidate(self, tenant_id: str | None) -> None:
        self.generation += 1
        if tenant_id is None:
            self._entries.clear()
        else:
            self._entries.pop(tenant_id, None)

    def clear(self) -> None:
        self.invalidate(None)


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

    async def resolution(self, tenant_id: str) -> Resolution:
        return self.known(tenant_id, self._clock.now()) or await self._load(tenant_id)

    def known(self, tenant_id: str, now: datetime) -> Resolution | None:
        """The cached resolution, without waiting; a due reload starts in the background."""
        cached, due = self._cache.get(tenant_id, now)
        if cached is not None and due and tenant_id not in self._loading:
            self._load(tenant_id).add_done_callback(_log_failure)
        return cached

    def _load(self, tenant_id: str) -> asyncio.Future[Resolution]:
        """One load per tenant at a time; a load begun before an invalidation is not joined."""
        generation = self._cache.generation
        loading = self._loading.get(tenant_id)
        if loading is not None and loading[0] == generation:
            return loading[1]

        async def load() -> Resolution:
            try:
                resolution = await self._resolve(tenant_id)
            except Exception as error:
                last = self._cache.last_known(tenant_id, self._clock.now())
                if last is None or not is_dependency_failure(error):
                    raise
                log.debug("entitlements served from memory", extra={"tenant_id": tenant_id})
                self._cache.keep_serving(last, generation)
                return last
            self._cache.put(resolution, generation)
            return resolution

        future = asyncio.ensure_future(load())
        self._loading[tenant_id] = (generation, future)

        def done(_: asyncio.Future[Resolution]) -> None:
            if self._loading.get(tenant_id, (0, None))[1] is future:
                del self._loading[tenant_id]

        future.add_done_callback(done)
        return future

    async def _resolve(self, tenant_id: str) -> Resolution:
        subscription = pick_subscription(await self._tenants.subscriptions(tenant_id))
        plan = None
        if subscription is not None and subscription.plan_code:
            plan = await self._catalog.get_plan(subscription.plan_code, subscription.plan_version)
        return resolve(
            tenant_id,
            subscription,
            plan,
            await self._tenants.add_ons_of(tenant_id),
            await self._tenants.overrides(tenant_id),
            await self._tenants.grants(tenant_id),
            await self._catalog.free_plan(),
            self._clock.now(),
        )

    async def _changed(self, tenant_id: str) -> None:
        self._cache.invalidate(tenant_id)
        await self._invalidations.publish(tenant_id)

    async def apply_snapshot(self, conn: asyncpg.Connection, view: SubscriptionView) -> None:
        """Project one subscription snapshot (in the event's inbox transaction)."""
        applied = await self._tenants.save_snapshot(conn, view)
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
