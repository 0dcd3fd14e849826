"""Consumers of recurring's subscription.* events: every one carries the full snapshot."""

from __future__ import annotations

from typing import get_args

import asyncpg

from billing.events.v1 import subscription_pb2 as events
from billing_common.events import Handlers
from quota.app.entitlements import Entitlements
from quota.entrypoints.mappers import subscription_view

SubscriptionEvent = (
    events.SubscriptionCreated
    | events.SubscriptionActivated
    | events.SubscriptionPlanChanged
    | events.SubscriptionPaused
    | events.SubscriptionResumed
    | events.SubscriptionCancelled
    | events.SubscriptionSuspended
    | events.SubscriptionCompleted
    | events.SubscriptionPastDue
    | events.SubscriptionRenewed
    | events.SubscriptionPaymentMethodUpdated
)
# Every subscription event type, each handled alike.
SUBSCRIPTION_EVENTS: tuple[type[SubscriptionEvent], ...] = get_args(SubscriptionEvent)


def subscription_handlers(entitlements: Entitlements) -> Handlers:
    async def on_subscription_event(conn: asyncpg.Connection, event: SubscriptionEvent) -> None:
        await entitlements.apply_snapshot(conn, subscription_view(event.subscription))

    handlers = Handlers()
    for event in SUBSCRIPTION_EVENTS:
        handlers.on(event, on_subscription_event)
    return handlers
