"""Subscription lifecycle: create from a plan snapshot or a custom amount, change, pause, cancel.
The domain (`domain.amendments`) checks and decides; these use cases load, write and announce."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import date
from zoneinfo import ZoneInfo

import asyncpg

from billing_common.clock import Clock
from billing_common.errors import existing
from billing_common.idempotency import IdempotencyKey
from recurring.app.ports import Quota, Store
from recurring.app.settling import apply
from recurring.domain import amendments
from recurring.domain.amendments import Amendment, Changes, CreateCommand
from recurring.domain.schedule import local_day
from recurring.domain.status import Action
from recurring.domain.subscription import (
    Cause,
    Subscription,
    created_entry,
)


class Subscriptions:
    def __init__(self, store: Store, quota: Quota, clock: Clock, zone: ZoneInfo) -> None:
        self._store = store
        self._quota = quota
        self._clock = clock
        self._zone = zone

    def today(self) -> date:
        return local_day(self._clock.now(), self._zone)

    async def create(self, cmd: CreateCommand, idem: IdempotencyKey, cause: Cause) -> Subscription:
        amendments.check_create(cmd, idem.key)
        plan = await self._quota.get_plan(cmd.plan_code) if cmd.plan_code else None
        now = self._clock.now()
        created = amendments.create(cmd, plan, f"sub_{uuid.uuid4().hex}", self.today(), now)
        sub = created.subscription
        async with self._store.transaction() as uow:
            earlier = await uow.keys.claim(idem)
            if earlier is not None:
                return existing(await uow.subscriptions.load([earlier]), earlier, "subscription")
            await uow.subscriptions.add([sub])
            await uow.subscriptions.add_history([created_entry(sub, cause, now)])
            await uow.outbox.add(created.events)
            await uow.keys.complete(idem, sub.subscription_id)
        return sub

    async def update(
        self, subscription_id: str, changes: Changes, idem: IdempotencyKey, cause: Cause
    ) -> Subscription:
        amendments.check_changes(changes)
        plan = await self._quota.get_plan(changes.plan_code) if "plan_code" in changes.mask else None
        return await self._change(
            subscription_id,
            idem,
            cause,
            lambda sub: amendments.amend(sub, changes, plan, self.today(), self._clock.now()),
        )

    async def pause(self, subscription_id: str, idem: IdempotencyKey, cause: Cause) -> Subscription:
        return await self._change(subscription_id, idem, cause, self._status_change(Action.PAUSE))

    async def resume(self, subscription_id: str, idem: IdempotencyKey, cause: Cause) -> Subscription:
        return await self._change(subscription_id, idem, cause, self._status_change(Action.RESUME))

    def _status_change(self, action: Action) -> Callable[[Subscription], Amendment]:
        return lambda sub: amendments.change_status(sub, action, self._clock.now())

    async def cancel(
        self, subscription_id: str, at_period_end: bool, idem: IdempotencyKey, cause: Cause
    ) -> Subscription:
        return await self._change(
            subscription_id,
            idem,
            cause,
            lambda sub: amendments.cancel(sub, at_period_end, self._clock.now()),
        )

    async def on_tier_changed(
        self, conn: asyncpg.Connection, account_id: str, tier: str, cause: Cause
    ) -> int:
        """tier.changed, in the inbox's transaction: move the account's tier-mapped subscriptions to the
        tier's plan; returns how many moved."""
        uow = self._store.within(conn)
        ids = await uow.subscriptions.tier_mapped(account_id)
        if not ids:
            return 0
        plan_code = await self._quota.plan_for_tier(tier)
        if not plan_code:
            return 0
        plan = await self._quota.get_plan(plan_code)
        subs = await uow.subscriptions.load(ids, lock=True)
        moving = [sub for sub in subs.values() if amendments.follows_tier(sub, plan)]
        now = self._clock.now()
        for sub in moving:
            moved = amendments.move_to_plan(sub, plan, "tier.changed", self.today(), now)
            await apply(uow, amendments.written(sub, moved, cause, now), now)
        return len(moving)

    async def _change(
        self,
        subscription_id: str,
        idem: IdempotencyKey,
        cause: Cause,
        decide: Callable[[Subscription], Amendment],
    ) -> Subscription:
        """Load the subscription locked, let the domain decide, write it; a key seen before answers
        with the subscription as it is."""
        async with self._store.transaction() as uow:
            if idem.key:
                earlier = await uow.keys.claim(idem)
                if earlier is not None:
                    return existing(await uow.subscriptions.load([earlier]), earlier, "subscription")
            sub = existing(
                await uow.subscriptions.load([subscription_id], lock=True), subscription_id, "subscription"
            )
            amendments.check_changeable(sub)
            amendment = decide(sub)
            now = self._clock.now()
            await apply(uow, amendments.written(sub, amendment, cause, now), now)
            if idem.key:
                await uow.keys.complete(idem, subscription_id)
            return amendment.subscription
