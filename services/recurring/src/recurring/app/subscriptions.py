"""Subscription lifecycle: create from a plan snapshot or a custom amount, change, pause, cancel."""

from __future__ import annotations

import dataclasses
import uuid
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any
from zoneinfo import ZoneInfo

from billing_common.clock import Clock
from billing_common.errors import FailedPrecondition, InvalidArgument, NotFound, Violations
from billing_common.idempotency import IdempotencyKey
from billing_common.money import Money
from billing_common.paging import Page, PageRequest
from recurring.app.ports import PlanInfo, Quota, Store, SubscriptionFilter, Tx
from recurring.domain.events import Event, EventType
from recurring.domain.proration import prorate
from recurring.domain.schedule import Frequency
from recurring.domain.status import TERMINAL, Action, SubscriptionStatus, can
from recurring.domain.subscription import (
    IGNORED_IN_DIFFS,
    Cause,
    HistoryEntry,
    NewSubscription,
    PaymentMethod,
    Subscription,
    cancelled,
    history_entry,
    open_subscription,
    reanchor,
    to_json,
    validate_new,
)

UPDATABLE = frozenset({"amount", "payment_method", "billing_anchor_day", "plan_code"})


@dataclass(frozen=True)
class CreateCommand:
    account_id: str
    merchant_id: str
    plan_code: str
    custom_amount: Money | None
    frequency: Frequency | None
    start_date: date | None
    anchor_day: int
    payment_method: PaymentMethod | None
    tier_mapped: bool


@dataclass(frozen=True)
class Changes:
    """New values of the fields an update names; only those in `mask` are applied."""

    mask: frozenset[str]
    amount: Money | None = None
    payment_method: PaymentMethod | None = None
    anchor_day: int = 0
    plan_code: str = ""


class Subscriptions:
    def __init__(self, store: Store, quota: Quota, clock: Clock, zone: ZoneInfo) -> None:
        self._store = store
        self._quota = quota
        self._clock = clock
        self._zone = zone

    def today(self) -> date:
        return self._clock.now().astimezone(self._zone).date()

    async def create(self, cmd: CreateCommand, idem: IdempotencyKey, cause: Cause) -> Subscription:
        violations = Violations()
        violations.check(bool(idem.key), "idempotency_key", "required")
        violations.check(
            bool(cmd.plan_code) != (cmd.custom_amount is not None),
            "pricing",
            "give either plan_code or custom_amount",
        )
        validate_new(
            cmd.account_id,
            cmd.merchant_id,
            cmd.anchor_day,
            0,
            cmd.payment_method.token if cmd.payment_method else "",
            violations,
        )
        violations.check(cmd.payment_method is not None, "payment_method.type", "required")
        if cmd.custom_amount is not None:
            violations.check(cmd.custom_amount.amount_minor >= 0, "custom_amount", "must not be negative")
            violations.check(cmd.frequency is not None, "frequency", "required for a custom amount")
        violations.raise_if_any()
        assert cmd.payment_method is not None
        if cmd.plan_code:
            plan = await self._quota.get_plan(cmd.plan_code)
            if cmd.frequency is not None and cmd.frequency is not plan.frequency:
                raise InvalidArgument.of(
                    "frequency", f"plan {plan.code} is billed {plan.frequency.value}; leave it unset"
                )
            amount, frequency, trial_days, version = plan.price, plan.frequency, plan.trial_days, plan.version
        else:
            assert cmd.custom_amount is not None and cmd.frequency is not None
            amount, frequency, trial_days, version = cmd.custom_amount, cmd.frequency, 0, 0
        now = self._clock.now()
        new = NewSubscription(
            account_id=cmd.account_id,
            merchant_id=cmd.merchant_id,
            plan_code=cmd.plan_code,
            plan_version=version,
            amount=amount,
            frequency=frequency,
            start_date=cmd.start_date or self.today(),
            anchor_day=cmd.anchor_day,
            payment_method=cmd.payment_method,
            trial_days=trial_days,
            tier_mapped=cmd.tier_mapped,
        )
        async with self._store.transaction() as tx:
            earlier = await tx.claim_key(idem)
            if earlier is not None:
                return await _existing(tx, earlier)
            sub = open_subscription(new, f"sub_{uuid.uuid4().hex}", now)
            await tx.insert_subscription(sub)
            created = {
                field.name: {"previous": None, "new": to_json(getattr(sub, field.name))}
                for field in dataclasses.fields(sub)
                if field.name not in IGNORED_IN_DIFFS
            }
            await tx.add_history(
                HistoryEntry(sub.subscription_id, created, cause.actor, cause.event_id, "created", now)
            )
            await tx.emit(Event(EventType.SUBSCRIPTION_CREATED, subscription=sub))
            await tx.complete_key(idem, sub.subscription_id)
        return sub

    async def get(self, subscription_id: str) -> Subscription:
        async with self._store.transaction() as tx:
            return await _existing(tx, subscription_id)

    async def page(self, where: SubscriptionFilter, page: PageRequest[str]) -> Page[Subscription, str]:
        async with self._store.transaction() as tx:
            subs = await tx.list_subscriptions(where, page.after, page.limit)
        return page.cut(subs, lambda sub: sub.subscription_id)

    async def history(self, subscription_id: str) -> list[HistoryEntry]:
        async with self._store.transaction() as tx:
            await _existing(tx, subscription_id)
            return await tx.history(subscription_id)

    async def update(
        self, subscription_id: str, changes: Changes, idem: IdempotencyKey, cause: Cause
    ) -> Subscription:
        unknown = changes.mask - UPDATABLE
        if not changes.mask or unknown:
            raise InvalidArgument.of(
                "update_mask",
                f"name one or more of {sorted(UPDATABLE)}" + (f"; not {sorted(unknown)}" if unknown else ""),
            )
        violations = Violations()
        if "amount" in changes.mask:
            violations.check(
                changes.amount is not None and changes.amount.amount_minor >= 0,
                "subscription.amount",
                "must be a non-negative amount",
            )
        if "payment_method" in changes.mask:
            violations.check(
                changes.payment_method is not None and bool(changes.payment_method.token),
                "subscription.payment_method",
                "needs a type and a gateway token",
            )
        if "billing_anchor_day" in changes.mask:
            violations.check(
                1 <= changes.anchor_day <= 31, "subscription.billing_anchor_day", "must be 1..31"
            )
        if "plan_code" in changes.mask:
            violations.check(bool(changes.plan_code), "subscription.plan_code", "required")
        violations.raise_if_any()
        plan = await self._quota.get_plan(changes.plan_code) if "plan_code" in changes.mask else None

        async def apply(tx: Tx, sub: Subscription) -> Subscription:
            now = self._clock.now()
            updated = sub
            if plan is not None:
                updated = await self._move_to_plan(tx, updated, plan, cause, "rpc")
            if "amount" in changes.mask:
                assert changes.amount is not None
                if updated.plan_code:
                    raise FailedPrecondition("the amount of a plan subscription comes from its plan")
                if changes.amount.currency != updated.amount.currency:
                    raise InvalidArgument.of("subscription.amount.currency", "cannot change the currency")
                updated = updated.changed(now, amount=changes.amount)
            if "billing_anchor_day" in changes.mask:
                if updated.frequency is not Frequency.MONTHLY:
                    raise InvalidArgument.of("subscription.billing_anchor_day", "only monthly subscriptions")
                updated = reanchor(updated, changes.anchor_day, now)
            if "payment_method" in changes.mask:
                assert changes.payment_method is not None
                updated = updated.changed(now, payment_method=changes.payment_method)
            await self._save(tx, sub, updated, cause)
            if updated.payment_method != sub.payment_method:
                await tx.emit(Event(EventType.SUBSCRIPTION_PAYMENT_METHOD_UPDATED, subscription=updated))
            return updated

        return await self._change(subscription_id, idem, apply)

    async def pause(self, subscription_id: str, idem: IdempotencyKey, cause: Cause) -> Subscription:
        return await self._status_change(
            subscription_id, idem, cause, Action.PAUSE, EventType.SUBSCRIPTION_PAUSED
        )

    async def resume(self, subscription_id: str, idem: IdempotencyKey, cause: Cause) -> Subscription:
        return await self._status_change(
            subscription_id, idem, cause, Action.RESUME, EventType.SUBSCRIPTION_RESUMED
        )

    async def cancel(
        self, subscription_id: str, at_period_end: bool, idem: IdempotencyKey, cause: Cause
    ) -> Subscription:
        async def apply(tx: Tx, sub: Subscription) -> Subscription:
            now = self._clock.now()
            if not can(sub.status, Action.CANCEL):
                raise FailedPrecondition(f"a {sub.status.value} subscription cannot be cancelled")
            if at_period_end:
                if sub.cancel_at_period_end:
                    return sub
                updated = sub.changed(now, cancel_at_period_end=True)
            else:
                updated = cancelled(sub, now)
            await self._save(tx, sub, updated, cause)
            await tx.emit(
                Event(
                    EventType.SUBSCRIPTION_CANCELLED,
                    subscription=updated,
                    extra={"at_period_end": at_period_end},
                )
            )
            return updated

        return await self._change(subscription_id, idem, apply)

    async def on_tier_changed(self, tx: Tx, account_id: str, tier: str, cause: Cause) -> int:
        """Move the account's tier-mapped subscriptions to the tier's plan; returns how many moved."""
        ids = await tx.tier_mapped_subscriptions(account_id)
        if not ids:
            return 0
        plan_code = await self._quota.plan_for_tier(tier)
        if not plan_code:
            return 0
        plan = await self._quota.get_plan(plan_code)
        moved = 0
        for subscription_id in ids:
            sub = await tx.load_subscription(subscription_id, lock=True)
            if sub is None or sub.status in TERMINAL or sub.plan_code == plan.code:
                continue
            if plan.frequency is not sub.frequency or plan.price.currency != sub.amount.currency:
                continue
            updated = await self._move_to_plan(tx, sub, plan, cause, "tier.changed")
            await self._save(tx, sub, updated, cause)
            moved += 1
        return moved

    async def _move_to_plan(
        self, tx: Tx, sub: Subscription, plan: PlanInfo, cause: Cause, why: str
    ) -> Subscription:
        """Snapshot the new plan; the rest of a paid period is prorated onto the next invoice."""
        if plan.frequency is not sub.frequency:
            raise InvalidArgument.of(
                "subscription.plan_code", f"plan {plan.code} is billed {plan.frequency.value}"
            )
        if plan.price.currency != sub.amount.currency:
            raise InvalidArgument.of(
                "subscription.plan_code", f"plan {plan.code} is priced in {plan.price.currency}"
            )
        now = self._clock.now()
        if is_paid_period(sub):
            for line in prorate(sub.amount, plan.price, sub.period, self.today()):
                await tx.add_proration(
                    sub.subscription_id,
                    f"{line.description}: {sub.plan_code or 'custom'} -> {plan.code}",
                    line.amount,
                )
        updated = sub.changed(now, plan_code=plan.code, plan_version=plan.version, amount=plan.price)
        await tx.emit(
            Event(
                EventType.SUBSCRIPTION_PLAN_CHANGED,
                subscription=updated,
                extra={
                    "previous_plan_code": sub.plan_code,
                    "previous_plan_version": sub.plan_version,
                    "cause": why,
                },
            )
        )
        return updated

    async def _status_change(
        self, subscription_id: str, idem: IdempotencyKey, cause: Cause, action: Action, event: EventType
    ) -> Subscription:
        async def apply(tx: Tx, sub: Subscription) -> Subscription:
            updated = sub.apply(action, self._clock.now())
            await self._save(tx, sub, updated, cause)
            await tx.emit(Event(event, subscription=updated))
            return updated

        return await self._change(subscription_id, idem, apply)

    async def _change(self, subscription_id: str, idem: IdempotencyKey, apply: Any) -> Subscription:
        async with self._store.transaction() as tx:
            if idem.key:
                earlier = await tx.claim_key(idem)
                if earlier is not None:
                    return await _existing(tx, earlier)
            sub = await tx.load_subscription(subscription_id, lock=True)
            if sub is None:
                raise NotFound(f"subscription {subscription_id} does not exist")
            if sub.status in TERMINAL:
                raise FailedPrecondition(f"the subscription is {sub.status.value}")
            updated: Subscription = await apply(tx, sub)
            if idem.key:
                await tx.complete_key(idem, subscription_id)
            return updated

    async def _save(self, tx: Tx, before: Subscription, after: Subscription, cause: Cause) -> None:
        await save_with_history(tx, before, after, cause, self._clock.now())


def is_paid_period(sub: Subscription) -> bool:
    """The current period was invoiced (the next due date lies past its start) and is not a trial."""
    if sub.status is SubscriptionStatus.TRIALING:
        return False
    return sub.next_billing_date is None or sub.next_billing_date > sub.current_period_start


async def save_with_history(
    tx: Tx, before: Subscription, after: Subscription, cause: Cause, now: datetime
) -> None:
    """Store the change and record only the fields that changed."""
    entry = history_entry(before, after, cause, now)
    if entry is None:
        return
    await tx.save_subscription(after)
    await tx.add_history(entry)


async def _existing(tx: Tx, subscription_id: str) -> Subscription:
    sub = await tx.load_subscription(subscription_id)
    if sub is None:
        raise NotFound(f"subscription {subscription_id} does not exist")
    return sub
