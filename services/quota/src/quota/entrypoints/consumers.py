"""Consumers of recurring's subscription.* events: every one carries the full snapshot."""

from __future__ import annotations

from typing import Any

from billing_common.events import Handler
from quota.app.entitlements import Entitlements
from quota.entrypoints.mappers import subscription_view

SUBSCRIPTION_EVENTS = (
    "subscription.created",
    "subscription.activated",
    "subscription.plan_changed",
    "subscription.paused",
    "subscription.resumed",
    "subscription.cancelled",
    "subscription.suspended",
    "subscription.completed",
    "subscription.past_due",
    "subscription.renewed",
    "subscription.payment_method_updated",
)


def subscription_handlers(entitlements: Entitlements) -> dict[str, Handler]:
    async def on_subscription_event(conn: Any, event: Any) -> None:
        await entitlements.apply_snapshot(conn, subscription_view(event.subscription))

    return dict.fromkeys(SUBSCRIPTION_EVENTS, on_subscription_event)
