"""Entitlements as JSON in PostgreSQL rows; the catalog's domain events as plan.* messages."""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal
from typing import Any

from google.protobuf.message import Message

from billing.events.v1 import quota_pb2 as events
from quota.domain.catalog import (
    Behaviour,
    Entitlement,
    Period,
    PlanCreated,
    PlanEvent,
    PlanRetired,
    PlanUpdated,
)


def entitlements_to_json(entitlements: Sequence[Entitlement]) -> list[dict[str, Any]]:
    return [
        {
            "key": e.key,
            "limit": e.limit,
            "period": e.period.value,
            "behaviour": e.behaviour.value,
            "included_quantity": e.included_quantity,
            "unit_price": None if e.unit_price is None else str(e.unit_price),
        }
        for e in entitlements
    ]


def entitlements_from_json(items: Sequence[dict[str, Any]]) -> tuple[Entitlement, ...]:
    return tuple(
        Entitlement(
            key=item["key"],
            limit=item["limit"],
            period=Period(item["period"]),
            behaviour=Behaviour(item["behaviour"]),
            included_quantity=item["included_quantity"],
            unit_price=None if item["unit_price"] is None else Decimal(item["unit_price"]),
        )
        for item in items
    )


def plan_event_message(event: PlanEvent) -> Message:
    match event:
        case PlanCreated():
            return events.PlanCreated(plan_code=event.plan_code, version=event.version)
        case PlanUpdated():
            return events.PlanUpdated(
                plan_code=event.plan_code, version=event.version, previous_version=event.previous_version
            )
        case PlanRetired():
            return events.PlanRetired(plan_code=event.plan_code)
