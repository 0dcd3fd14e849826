"""The facts recurring announces: the domain decides them, the adapter encodes the contract's messages."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from recurring.domain.invoicing import Invoice, Transaction
from recurring.domain.runs import Run
from recurring.domain.subscription import Subscription


class EventType(enum.Enum):
    SUBSCRIPTION_CREATED = "subscription.created"
    SUBSCRIPTION_ACTIVATED = "subscription.activated"
    SUBSCRIPTION_PLAN_CHANGED = "subscription.plan_changed"
    SUBSCRIPTION_PAUSED = "subscription.paused"
    SUBSCRIPTION_RESUMED = "subscription.resumed"
    SUBSCRIPTION_CANCELLED = "subscription.cancelled"
    SUBSCRIPTION_SUSPENDED = "subscription.suspended"
    SUBSCRIPTION_COMPLETED = "subscription.completed"
    SUBSCRIPTION_PAST_DUE = "subscription.past_due"
    SUBSCRIPTION_RENEWED = "subscription.renewed"
    SUBSCRIPTION_PAYMENT_METHOD_UPDATED = "subscription.payment_method_updated"
    INVOICE_CREATED = "invoice.created"
    INVOICE_PAID = "invoice.paid"
    INVOICE_PAYMENT_FAILED = "invoice.payment_failed"
    INVOICE_VOIDED = "invoice.voided"
    INVOICE_UNCOLLECTIBLE = "invoice.uncollectible"
    RUN_STARTED = "run.started"
    RUN_COMPLETED = "run.completed"
    RUN_HALTED = "run.halted"
    RUN_STALLED = "run.stalled"


@dataclass(frozen=True)
class Event:
    """A fact to publish through the outbox; the adapter turns it into the contract's message."""

    type: EventType
    subscription: Subscription | None = None
    invoice: Invoice | None = None
    run: Run | None = None
    transaction: Transaction | None = None
    # Event-specific values: previous plan, cause, reason, gateway, amounts.
    extra: dict[str, Any] = field(default_factory=dict)
