"""The subscription aggregate: its snapshot of price and schedule, and diffs of its changes."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from enum import StrEnum
from typing import Any

from billing_common.errors import Violations
from billing_common.money import Money
from billing_common.payments import MethodType
from billing_common.subscriptions import Frequency, SubscriptionStatus
from recurring.domain.schedule import Period, first_due_date, next_due_date, period_starting
from recurring.domain.status import Action, transition


@dataclass(frozen=True)
class PlanInfo:
    """A plan as quota prices it; a subscription snapshots it when it moves onto the plan."""

    code: str
    version: int
    name: str
    price: Money
    frequency: Frequency
    trial_days: int


@dataclass(frozen=True)
class SubscriptionFilter:
    account_id: str = ""
    status: SubscriptionStatus | None = None
    frequency: Frequency | None = None


@dataclass(frozen=True)
class PaymentMethod:
    type: MethodType
    token: str


@dataclass(frozen=True)
class Subscription:
    subscription_id: str
    account_id: str
    merchant_id: str
    status: SubscriptionStatus
    plan_code: str
    plan_version: int
    amount: Money
    frequency: Frequency
    start_date: date
    anchor_day: int
    payment_method: PaymentMethod
    trial_days: int
    trial_end: date | None
    current_period_start: date
    current_period_end: date
    next_billing_date: date | None
    tier_mapped: bool
    cancel_at_period_end: bool
    version: int
    created_at: datetime
    updated_at: datetime

    @property
    def period(self) -> Period:
        return Period(self.current_period_start, self.current_period_end)

    def apply(self, action: Action, now: datetime) -> Subscription:
        return self.changed(now, status=transition(self.status, action))

    def changed(self, now: datetime, **fields: Any) -> Subscription:
        return dataclasses.replace(self, version=self.version + 1, updated_at=now, **fields)


@dataclass(frozen=True)
class NewSubscription:
    account_id: str
    merchant_id: str
    plan_code: str
    plan_version: int
    amount: Money
    frequency: Frequency
    start_date: date
    anchor_day: int
    payment_method: PaymentMethod
    trial_days: int
    tier_mapped: bool


def validate_new(
    account_id: str,
    merchant_id: str,
    anchor_day: int,
    trial_days: int,
    token: str,
    violations: Violations,
) -> None:
    violations.check(bool(account_id), "account_id", "required")
    violations.check(bool(merchant_id), "merchant_id", "required")
    violations.check(0 <= anchor_day <= 31, "billing_anchor_day", "must be 1..31 (0: the start day)")
    violations.check(trial_days >= 0, "trial_days", "must not be negative")
    violations.check(bool(token), "payment_method.gateway_token", "required")


def open_subscription(new: NewSubscription, subscription_id: str, now: datetime) -> Subscription:
    """Trial first (if any), then the first period starts on the first due date."""
    anchor = new.anchor_day or new.start_date.day
    trial_end = new.start_date + timedelta(days=new.trial_days) if new.trial_days else None
    first_bill = first_due_date(new.frequency, trial_end or new.start_date, anchor)
    if trial_end is not None:
        period = Period(new.start_date, first_bill)
        status = SubscriptionStatus.TRIALING
    else:
        period = period_starting(new.frequency, first_bill, anchor)
        status = SubscriptionStatus.ACTIVE
    return Subscription(
        subscription_id=subscription_id,
        account_id=new.account_id,
        merchant_id=new.merchant_id,
        status=status,
        plan_code=new.plan_code,
        plan_version=new.plan_version,
        amount=new.amount,
        frequency=new.frequency,
        start_date=new.start_date,
        anchor_day=anchor,
        payment_method=new.payment_method,
        trial_days=new.trial_days,
        trial_end=trial_end,
        current_period_start=period.start,
        current_period_end=period.end,
        next_billing_date=first_bill,
        tier_mapped=new.tier_mapped,
        cancel_at_period_end=False,
        version=1,
        created_at=now,
        updated_at=now,
    )


def renew(sub: Subscription, due: date, now: datetime) -> Subscription:
    """The occurrence due on `due` was invoiced: its period becomes current, the next one is due."""
    period = period_starting(sub.frequency, due, sub.anchor_day)
    return sub.changed(
        now,
        current_period_start=period.start,
        current_period_end=period.end,
        next_billing_date=next_due_date(sub.frequency, due, sub.anchor_day),
    )


def skip_occurrence(sub: Subscription, due: date, now: datetime) -> Subscription:
    """A paused or suspended subscription's occurrence passes without an invoice."""
    return sub.changed(now, next_billing_date=next_due_date(sub.frequency, due, sub.anchor_day))


def reanchor(sub: Subscription, anchor_day: int, now: datetime) -> Subscription:
    """A new anchor day moves the next monthly due date (never before the current period ends)."""
    if sub.frequency is not Frequency.MONTHLY or sub.next_billing_date is None:
        return sub.changed(now, anchor_day=anchor_day)
    nxt = first_due_date(Frequency.MONTHLY, sub.current_period_end, anchor_day)
    return sub.changed(now, anchor_day=anchor_day, next_billing_date=nxt, current_period_end=nxt)


def to_json(value: Any) -> Any:
    """The JSON form of a field value, as history diffs store it."""
    if isinstance(value, Money):
        return {"amount_minor": value.amount_minor, "currency": value.currency}
    if isinstance(value, PaymentMethod):
        return {"type": value.type.value, "token": value.token}
    if isinstance(value, StrEnum):
        return value.value
    if isinstance(value, date | datetime):
        return value.isoformat()
    return value


IGNORED_IN_DIFFS = frozenset({"version", "updated_at", "created_at"})


def diff(before: Subscription, after: Subscription) -> dict[str, dict[str, Any]]:
    """Only the fields that changed, each with its previous and new JSON value."""
    changes: dict[str, dict[str, Any]] = {}
    for field in dataclasses.fields(Subscription):
        if field.name in IGNORED_IN_DIFFS:
            continue
        old, new = getattr(before, field.name), getattr(after, field.name)
        if old != new:
            changes[field.name] = {"previous": to_json(old), "new": to_json(new)}
    return changes


@dataclass(frozen=True)
class HistoryEntry:
    subscription_id: str
    changes: dict[str, dict[str, Any]]
    actor: str
    cause_event_id: str
    reason: str
    changed_at: datetime


@dataclass(frozen=True)
class Cause:
    """Who or what changed a subscription, as its history records it."""

    actor: str
    event_id: str = ""
    reason: str = ""


def cancelled(sub: Subscription, now: datetime) -> Subscription:
    return sub.apply(Action.CANCEL, now).changed(now, next_billing_date=None, cancel_at_period_end=False)


def created_entry(sub: Subscription, cause: Cause, now: datetime) -> HistoryEntry:
    """A new subscription's first history entry: every field, from nothing."""
    changes = {
        field.name: {"previous": None, "new": to_json(getattr(sub, field.name))}
        for field in dataclasses.fields(Subscription)
        if field.name not in IGNORED_IN_DIFFS
    }
    return HistoryEntry(sub.subscription_id, changes, cause.actor, cause.event_id, "created", now)


def history_entry(
    before: Subscription, after: Subscription, cause: Cause, now: datetime
) -> HistoryEntry | None:
    """The fields that changed, as the history records them; None when nothing changed."""
    changes = diff(before, after)
    if not changes:
        return None
    return HistoryEntry(after.subscription_id, changes, cause.actor, cause.event_id, cause.reason, now)
