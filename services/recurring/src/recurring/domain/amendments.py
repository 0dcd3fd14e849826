"""What a customer's or an operator's request does to a subscription: checked here, decided here,
written by the one applicator (the subscription with its history, prorations for the next invoice,
events)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from datetime import date, datetime

from billing_common.errors import FailedPrecondition, InvalidArgument, Violations
from billing_common.money import Money
from billing_common.subscriptions import Frequency, SubscriptionStatus
from recurring.domain import events as ev
from recurring.domain.proration import ProrationLine, prorate
from recurring.domain.settlement import Announced, Change
from recurring.domain.status import TERMINAL, Action, can
from recurring.domain.subscription import (
    Cause,
    NewSubscription,
    PaymentMethod,
    PlanInfo,
    Subscription,
    cancelled,
    history_entry,
    open_subscription,
    reanchor,
    validate_new,
)

UPDATABLE = frozenset({"amount", "payment_method", "billing_anchor_day", "plan_code"})
STATUS_EVENTS: dict[Action, type[ev.SubscriptionEvent]] = {
    Action.PAUSE: ev.SubscriptionPaused,
    Action.RESUME: ev.SubscriptionResumed,
}


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


@dataclass(frozen=True)
class Amendment:
    """A subscription after a request, the lines it leaves for the next invoice, and what it announces."""

    subscription: Subscription
    prorations: list[ProrationLine] = field(default_factory=list)
    events: list[ev.Event] = field(default_factory=list)


def written(before: Subscription, amendment: Amendment, cause: Cause, now: datetime) -> Change:
    """What an amendment writes: the subscription with only the fields that changed in its history,
    its prorations and its events."""
    change = Change(events=[Announced(event) for event in amendment.events])
    entry = history_entry(before, amendment.subscription, cause, now)
    if entry is not None:
        change.subscriptions[before.subscription_id] = amendment.subscription
        change.history.append(entry)
    if amendment.prorations:
        change.new_prorations[before.subscription_id] = amendment.prorations
    return change


def check_create(cmd: CreateCommand, idempotency_key: str) -> None:
    violations = Violations()
    violations.check(bool(idempotency_key), "idempotency_key", "required")
    violations.check(
        bool(cmd.plan_code) != (cmd.custom_amount is not None),
        "pricing",
        "give either plan_code or custom_amount",
    )
    token = cmd.payment_method.token if cmd.payment_method else ""
    validate_new(cmd.account_id, cmd.merchant_id, cmd.anchor_day, 0, token, violations)
    violations.check(cmd.payment_method is not None, "payment_method.type", "required")
    if cmd.custom_amount is not None:
        violations.check(cmd.custom_amount.amount_minor >= 0, "custom_amount", "must not be negative")
        violations.check(cmd.frequency is not None, "frequency", "required for a custom amount")
    violations.raise_if_any()


def create(
    cmd: CreateCommand, plan: PlanInfo | None, subscription_id: str, today: date, now: datetime
) -> Amendment:
    """A checked command's subscription, opened (its trial first, if any), and its announcement."""
    sub = open_subscription(_new_subscription(cmd, plan, today), subscription_id, now)
    return Amendment(sub, events=[ev.SubscriptionCreated(sub)])


def _new_subscription(cmd: CreateCommand, plan: PlanInfo | None, today: date) -> NewSubscription:
    """A checked command priced by its plan (snapshotted now) or by its custom amount."""
    assert cmd.payment_method is not None
    if plan is not None:
        if cmd.frequency is not None and cmd.frequency is not plan.frequency:
            raise InvalidArgument.of(
                "frequency", f"plan {plan.code} is billed {plan.frequency.value}; leave it unset"
            )
        amount, frequency, trial_days, version = plan.price, plan.frequency, plan.trial_days, plan.version
    else:
        assert cmd.custom_amount is not None and cmd.frequency is not None
        amount, frequency, trial_days, version = cmd.custom_amount, cmd.frequency, 0, 0
    return NewSubscription(
        account_id=cmd.account_id,
        merchant_id=cmd.merchant_id,
        plan_code=cmd.plan_code,
        plan_version=version,
        amount=amount,
        frequency=frequency,
        start_date=cmd.start_date or today,
        anchor_day=cmd.anchor_day,
        payment_method=cmd.payment_method,
        trial_days=trial_days,
        tier_mapped=cmd.tier_mapped,
    )


def check_changes(changes: Changes) -> None:
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
        violations.check(1 <= changes.anchor_day <= 31, "subscription.billing_anchor_day", "must be 1..31")
    if "plan_code" in changes.mask:
        violations.check(bool(changes.plan_code), "subscription.plan_code", "required")
    violations.raise_if_any()


def check_changeable(sub: Subscription) -> None:
    if sub.status in TERMINAL:
        raise FailedPrecondition(f"the subscription is {sub.status.value}")


def is_paid_period(sub: Subscription) -> bool:
    """The current period was invoiced (the next due date lies past its start) and is not a trial."""
    if sub.status is SubscriptionStatus.TRIALING:
        return False
    return sub.next_billing_date is None or sub.next_billing_date > sub.current_period_start


def move_to_plan(sub: Subscription, plan: PlanInfo, why: str, today: date, now: datetime) -> Amendment:
    """Snapshot the new plan; the rest of a paid period is prorated onto the next invoice."""
    if plan.frequency is not sub.frequency:
        raise InvalidArgument.of(
            "subscription.plan_code", f"plan {plan.code} is billed {plan.frequency.value}"
        )
    if plan.price.currency != sub.amount.currency:
        raise InvalidArgument.of(
            "subscription.plan_code", f"plan {plan.code} is priced in {plan.price.currency}"
        )
    prorations = []
    if is_paid_period(sub):
        prorations = [
            dataclasses.replace(
                line, description=f"{line.description}: {sub.plan_code or 'custom'} -> {plan.code}"
            )
            for line in prorate(sub.amount, plan.price, sub.period, today)
        ]
    updated = sub.changed(now, plan_code=plan.code, plan_version=plan.version, amount=plan.price)
    moved = ev.SubscriptionPlanChanged(updated, sub.plan_code, sub.plan_version, why)
    return Amendment(updated, prorations, [moved])


def tier_moving_plans(account_id: str, billed_account_id: str) -> str | None:
    """The account whose tier-mapped plans a tier change moves, if any: only the billed account's own
    tier picks its plan. A database or end user below it moves that tier through the roll-up, and a
    downgrade of one of them alone must not move the plan."""
    if billed_account_id and billed_account_id != account_id:
        return None
    return account_id


def follows_tier(sub: Subscription, plan: PlanInfo) -> bool:
    """A tier-mapped subscription moves to its tier's plan when the plan bills it the same way."""
    return (
        sub.status not in TERMINAL
        and sub.plan_code != plan.code
        and plan.frequency is sub.frequency
        and plan.price.currency == sub.amount.currency
    )


def amend(
    sub: Subscription, changes: Changes, plan: PlanInfo | None, today: date, now: datetime
) -> Amendment:
    """An update's fields applied in order: plan, amount, anchor day, payment method."""
    moved = move_to_plan(sub, plan, "rpc", today, now) if plan is not None else Amendment(sub)
    updated = moved.subscription
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
    events = list(moved.events)
    if updated.payment_method != sub.payment_method:
        events.append(ev.SubscriptionPaymentMethodUpdated(updated))
    return Amendment(updated, moved.prorations, events)


def cancel(sub: Subscription, at_period_end: bool, now: datetime) -> Amendment:
    """Cancelled now, or at the end of the paid period (asked twice, the second changes nothing)."""
    if not can(sub.status, Action.CANCEL):
        raise FailedPrecondition(f"a {sub.status.value} subscription cannot be cancelled")
    if at_period_end and sub.cancel_at_period_end:
        return Amendment(sub)
    updated = sub.changed(now, cancel_at_period_end=True) if at_period_end else cancelled(sub, now)
    return Amendment(updated, events=[ev.SubscriptionCancelled(updated, at_period_end)])


def change_status(sub: Subscription, action: Action, now: datetime) -> Amendment:
    """Pause or resume."""
    updated = sub.apply(action, now)
    return Amendment(updated, events=[STATUS_EVENTS[action](updated)])
