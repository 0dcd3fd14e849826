"""Catalog use cases: plans (versioned), add-ons and the tier mapping."""

from __future__ import annotations

from collections.abc import Mapping

from billing_common.clock import Clock
from billing_common.errors import InvalidArgument, NotFound, Violations
from billing_common.idempotency import IdempotencyKey
from billing_common.paging import Page, PageRequest
from billing_common.tiers import Tier
from quota.app.entitlements import EntitlementCache
from quota.app.ports import CatalogStore, Invalidations
from quota.domain.catalog import (
    AddOn,
    AddOnDraft,
    Plan,
    PlanDraft,
    check_code,
    validate_add_on,
    validate_plan,
)

TIERS = tuple(tier.value for tier in Tier)


def require_idempotency_key(key: str, field_name: str = "idempotency_key") -> None:
    if not key or len(key) > 200:
        raise InvalidArgument.of(field_name, "is required (1-200 characters)")


class Catalog:
    def __init__(
        self, store: CatalogStore, clock: Clock, cache: EntitlementCache, invalidations: Invalidations
    ) -> None:
        self._store = store
        self._clock = clock
        self._cache = cache
        self._invalidations = invalidations

    async def _changed(self) -> None:
        """A plan change can alter every tenant's resolution (free fallback, versions)."""
        self._cache.clear()
        await self._invalidations.publish(None)

    async def create_plan(self, code: str, draft: PlanDraft, idem: IdempotencyKey) -> Plan:
        require_idempotency_key(idem.key)
        spec = validate_plan(code, draft)
        plan = await self._store.create_plan(code, spec, self._clock.now(), idem)
        await self._changed()
        return plan

    async def update_plan(self, code: str, draft: PlanDraft, idem: IdempotencyKey) -> Plan:
        require_idempotency_key(idem.key)
        spec = validate_plan(code, draft)
        plan = await self._store.update_plan(code, spec, self._clock.now(), idem)
        await self._changed()
        return plan

    async def get_plan(self, code: str, version: int = 0) -> Plan:
        if version < 0:
            raise InvalidArgument.of("version", "must not be negative")
        plan = await self._store.get_plan(code, version)
        if plan is None:
            raise NotFound(f"plan {code}" + (f" version {version}" if version else "") + " does not exist")
        return plan

    async def list_plans(self, page: PageRequest[str], include_retired: bool) -> Page[Plan, str]:
        """Pages ordered by code; the cursor is the last code of the previous page."""
        plans = await self._store.list_plans(page.after, page.limit, include_retired)
        return page.cut(plans, lambda plan: plan.code)

    async def retire_plan(self, code: str) -> Plan:
        plan = await self._store.retire_plan(code)
        await self._changed()
        return plan

    async def create_add_on(self, draft: AddOnDraft, idem: IdempotencyKey) -> AddOn:
        require_idempotency_key(idem.key)
        add_on = validate_add_on(draft)
        return await self._store.create_add_on(add_on, self._clock.now(), idem)

    async def list_add_ons(self) -> list[AddOn]:
        return await self._store.list_add_ons()

    async def set_tier_plans(self, mapping: Mapping[str, str]) -> dict[str, str]:
        violations = Violations()
        for tier, code in mapping.items():
            violations.check(tier in TIERS, f"mappings[{tier}].tier", f"must be one of {TIERS}")
            check_code(violations, f"mappings[{tier}].plan_code", code)
        violations.raise_if_any()
        for tier, code in mapping.items():
            plan = await self._store.get_plan(code)
            if plan is None or plan.retired:
                raise InvalidArgument.of(f"mappings[{tier}].plan_code", f"no active plan {code!r}")
        return await self._store.set_tier_plans(mapping)

    async def tier_plans(self) -> dict[str, str]:
        return await self._store.tier_plans()
