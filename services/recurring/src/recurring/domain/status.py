"""Subscription and invoice states as data: the transition tables decide what is legal."""

from __future__ import annotations

from enum import StrEnum

from billing_common.errors import FailedPrecondition
from billing_common.subscriptions import SubscriptionStatus


class Action(StrEnum):
    ACTIVATE = "activate"  # trial over and paid, or first payment
    PAYMENT_FAILED = "payment_failed"
    PAYMENT_RECOVERED = "payment_recovered"
    PAUSE = "pause"
    RESUME = "resume"
    SUSPEND = "suspend"
    CANCEL = "cancel"
    COMPLETE = "complete"  # a one-time subscription was paid


S = SubscriptionStatus
A = Action
SUBSCRIPTION_TRANSITIONS: dict[tuple[SubscriptionStatus, Action], SubscriptionStatus] = {
    (S.TRIALING, A.ACTIVATE): S.ACTIVE,
    (S.TRIALING, A.PAYMENT_FAILED): S.PAST_DUE,
    (S.TRIALING, A.PAUSE): S.PAUSED,
    (S.TRIALING, A.CANCEL): S.CANCELLED,
    (S.TRIALING, A.COMPLETE): S.COMPLETED,
    (S.ACTIVE, A.PAYMENT_FAILED): S.PAST_DUE,
    (S.ACTIVE, A.PAUSE): S.PAUSED,
    (S.ACTIVE, A.SUSPEND): S.SUSPENDED,
    (S.ACTIVE, A.CANCEL): S.CANCELLED,
    (S.ACTIVE, A.COMPLETE): S.COMPLETED,
    (S.PAST_DUE, A.PAYMENT_FAILED): S.PAST_DUE,
    (S.PAST_DUE, A.PAYMENT_RECOVERED): S.ACTIVE,
    (S.PAST_DUE, A.PAUSE): S.PAUSED,
    (S.PAST_DUE, A.SUSPEND): S.SUSPENDED,
    (S.PAST_DUE, A.CANCEL): S.CANCELLED,
    (S.PAST_DUE, A.COMPLETE): S.COMPLETED,
    (S.PAUSED, A.RESUME): S.ACTIVE,
    (S.PAUSED, A.CANCEL): S.CANCELLED,
    (S.SUSPENDED, A.PAYMENT_RECOVERED): S.ACTIVE,
    (S.SUSPENDED, A.CANCEL): S.CANCELLED,
}
TERMINAL = frozenset({S.CANCELLED, S.COMPLETED})
# States whose due occurrences are billed; paused and suspended ones are recorded as skipped.
BILLABLE = frozenset({S.TRIALING, S.ACTIVE, S.PAST_DUE})
SCHEDULED = BILLABLE | {S.PAUSED, S.SUSPENDED}


def transition(status: SubscriptionStatus, action: Action) -> SubscriptionStatus:
    try:
        return SUBSCRIPTION_TRANSITIONS[(status, action)]
    except KeyError:
        raise FailedPrecondition(
            f"a {status.value} subscription cannot {action.value.replace('_', ' ')}"
        ) from None


def can(status: SubscriptionStatus, action: Action) -> bool:
    return (status, action) in SUBSCRIPTION_TRANSITIONS


class InvoiceStatus(StrEnum):
    DRAFT = "draft"
    OPEN = "open"
    PAID = "paid"
    PAYMENT_FAILED = "payment_failed"
    UNCOLLECTIBLE = "uncollectible"
    VOID = "void"


INV = InvoiceStatus
INVOICE_TRANSITIONS: frozenset[tuple[InvoiceStatus, InvoiceStatus]] = frozenset(
    {
        (INV.DRAFT, INV.OPEN),
        (INV.DRAFT, INV.VOID),
        (INV.OPEN, INV.PAID),
        (INV.OPEN, INV.PAYMENT_FAILED),
        (INV.OPEN, INV.VOID),
        (INV.OPEN, INV.UNCOLLECTIBLE),
        (INV.PAYMENT_FAILED, INV.PAID),
        (INV.PAYMENT_FAILED, INV.UNCOLLECTIBLE),
        (INV.PAYMENT_FAILED, INV.VOID),
        # An ACH debit returned after the invoice was paid.
        (INV.PAID, INV.PAYMENT_FAILED),
    }
)


def invoice_transition(current: InvoiceStatus, target: InvoiceStatus) -> InvoiceStatus:
    if (current, target) not in INVOICE_TRANSITIONS:
        raise FailedPrecondition(f"a {current.value} invoice cannot become {target.value}")
    return target
