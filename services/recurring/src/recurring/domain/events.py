"""The facts recurring announces, one type per fact: the domain decides them, the adapter encodes
the contract's messages (protos/billing/events/v1)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from recurring.domain.invoicing import Invoice, Transaction
from recurring.domain.subscription import Subscription

if TYPE_CHECKING:  # runs decides run events, so it imports this module
    from recurring.domain.runs import Run

# ------------------------------------------------------------------ subscriptions


@dataclass(frozen=True)
class SubscriptionEvent:
    """A subscription's change, carrying the subscription as it is after it."""

    subscription: Subscription


@dataclass(frozen=True)
class SubscriptionCreated(SubscriptionEvent):
    pass


@dataclass(frozen=True)
class SubscriptionActivated(SubscriptionEvent):
    pass


@dataclass(frozen=True)
class SubscriptionPlanChanged(SubscriptionEvent):
    previous_plan_code: str
    previous_plan_version: int
    cause: str  # "rpc" or the event that moved it ("tier.changed")


@dataclass(frozen=True)
class SubscriptionPaused(SubscriptionEvent):
    pass


@dataclass(frozen=True)
class SubscriptionResumed(SubscriptionEvent):
    pass


@dataclass(frozen=True)
class SubscriptionCancelled(SubscriptionEvent):
    at_period_end: bool


@dataclass(frozen=True)
class SubscriptionSuspended(SubscriptionEvent):
    pass


@dataclass(frozen=True)
class SubscriptionCompleted(SubscriptionEvent):
    pass


@dataclass(frozen=True)
class SubscriptionPastDue(SubscriptionEvent):
    pass


@dataclass(frozen=True)
class SubscriptionRenewed(SubscriptionEvent):
    pass


@dataclass(frozen=True)
class SubscriptionPaymentMethodUpdated(SubscriptionEvent):
    pass


# ------------------------------------------------------------------ invoices


@dataclass(frozen=True)
class InvoiceEvent:
    invoice: Invoice


@dataclass(frozen=True)
class InvoiceCreated(InvoiceEvent):
    pass


@dataclass(frozen=True)
class InvoicePaid(InvoiceEvent):
    payment: Transaction | None  # None: account credit paid it all


@dataclass(frozen=True)
class InvoicePaymentFailed(InvoiceEvent):
    attempt: Transaction


@dataclass(frozen=True)
class InvoiceVoided(InvoiceEvent):
    reason: str


@dataclass(frozen=True)
class InvoiceUncollectible(InvoiceEvent):
    pass


# ------------------------------------------------------------------ runs


@dataclass(frozen=True)
class RunEvent:
    run: Run


@dataclass(frozen=True)
class RunStarted(RunEvent):
    due: int


@dataclass(frozen=True)
class RunCompleted(RunEvent):
    pass


@dataclass(frozen=True)
class RunHalted(RunEvent):
    gateway: str
    deferred_items: int


@dataclass(frozen=True)
class RunStalled(RunEvent):
    pass


Event = SubscriptionEvent | InvoiceEvent | RunEvent
