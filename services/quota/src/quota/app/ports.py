"""What the use cases need from the outside world; adapters implement these."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import NamedTuple, Protocol

import asyncpg

from billing_common.idempotency import IdempotencyKey
from quota.domain.catalog import ActiveAddOn, AddOn, Plan, PlanSpec
from quota.domain.quota import CheckDecision
from quota.domain.resolution import Grant, Override, SubscriptionView


class CatalogStore(Protocol):
    async def create_plan(self, code: str, spec: PlanSpec, now: datetime, idem: IdempotencyKey) -> Plan: ...
    async def update_plan(self, code: str, spec: PlanSpec, now: datetime, idem: IdempotencyKey) -> Plan: ...
    async def get_plan(self, code: str, version: int = 0) -> Plan | None: ...
    async def list_plans(self, after_code: str, limit: int, include_retired: bool) -> list[Plan]: ...
    async def retire_plan(self, code: str) -> Plan: ...
    async def free_plan(self) -> Plan | None: ...
    async def create_add_on(self, add_on: AddOn, now: datetime, idem: IdempotencyKey) -> AddOn: ...
    async def list_add_ons(self) -> list[AddOn]: ...
    async def set_tier_plans(self, mapping: Mapping[str, str]) -> dict[str, str]: ...
    async def tier_plans(self) -> dict[str, str]: ...


@dataclass(frozen=True)
class Standing:
    """What a tenant's entitlements are resolved from, besides the catalog."""

    subscriptions: list[SubscriptionView]
    add_ons: list[AddOn]  # held now
    overrides: list[Override]
    grants: list[Grant]


class TenantSession(Protocol):
    """The tenant projection on a connection whose transaction the caller owns (an event's inbox)."""

    async def save_snapshot(self, view: SubscriptionView) -> SubscriptionView | None:
        """Apply a snapshot; None when an equal or newer one is applied."""
        ...


class TenantStore(Protocol):
    def within(self, conn: asyncpg.Connection) -> TenantSession:
        """The transaction an event handler already runs in (the inbox's)."""
        ...

    async def standings(self, tenant_ids: Sequence[str], at: datetime) -> dict[str, Standing]:
        """Each tenant's standing at `at` (the service's clock; an unknown tenant's is empty); a
        few queries for them all, however many they are."""
        ...

    async def attach_add_on(self, tenant_id: str, code: str, attached: bool, at: datetime) -> None:
        """Add (from `at`) or remove (at `at`) an add-on; adding a held one or removing one not held
        changes nothing, so a stretch keeps the time it began."""
        ...

    async def add_ons_held(self, periods: Sequence[TenantPeriod]) -> list[list[ActiveAddOn]]:
        """For each tenant's [start, end), every stretch in which it held an add-on, clamped to the
        window, in the order they began; one query for them all."""
        ...

    async def set_override(self, override: Override | None, tenant_id: str, key: str) -> None: ...
    async def create_grant(self, grant: Grant, idem: IdempotencyKey) -> Grant: ...


class CounterRef(NamedTuple):
    """One counter: a tenant's usage of a key in one window (identified by its start).

    A tuple, so that it hashes in C: the counters adapter looks its Redis key up on every check.
    """

    tenant_id: str
    key: str
    period_start: datetime
    period_end: datetime | None


class CounterStatus(StrEnum):
    COUNTED = "counted"
    DUPLICATE = "duplicate"
    MISMATCH = "mismatch"  # the idempotency key was used for a different event
    DENIED = "denied"
    NEGATIVE = "negative"  # would take usage below zero
    MISSING = "missing"  # the counter is not in the store: rebuild it, then retry


@dataclass(frozen=True)
class CounterOp:
    counter: CounterRef
    idempotency_key: str
    fingerprint: str
    delta: int
    deny_over: int | None  # refuse when usage would exceed this; None: never refuse


@dataclass(frozen=True)
class CounterResult:
    status: CounterStatus
    used: int  # after the op when counted; as found otherwise


class Counters(Protocol):
    """The hot counters (Redis): atomic check-and-add per counter, nothing kept on disk."""

    def known(self, counter: CounterRef) -> int | None:
        """The current value if this process holds it (no round trip), else None."""
        ...

    async def read(self, counters: Sequence[CounterRef]) -> list[int | None]: ...
    async def seed(self, values: Mapping[CounterRef, int]) -> None:
        """Set missing counters to the ledger's totals, in one round trip; one that reappeared
        meanwhile wins."""
        ...

    async def apply(self, ops: Sequence[CounterOp]) -> list[CounterResult]: ...
    async def undo(self, ops: Sequence[CounterOp]) -> None:
        """Take back ops whose idempotency entry is still theirs (at most once each)."""
        ...

    async def held(self, ops: Sequence[CounterOp]) -> list[bool]:
        """Whether each op's idempotency entry still says its counter holds it."""
        ...


@dataclass(frozen=True)
class UsageRecord:
    tenant_id: str
    key: str
    delta: int
    idempotency_key: str
    occurred_at: datetime
    period_start: datetime

    @property
    def fingerprint(self) -> str:
        return f"{self.key}|{self.delta}"


@dataclass(frozen=True)
class ThresholdAlert:
    """A crossing to publish once, if the record with `idempotency_key` is stored."""

    tenant_id: str
    idempotency_key: str
    key: str
    percent: int
    used: int
    limit: int
    period_start: datetime
    period_end: datetime | None


class AppendStatus(StrEnum):
    STORED = "stored"
    DUPLICATE = "duplicate"
    MISMATCH = "mismatch"


@dataclass(frozen=True)
class TenantPeriod:
    tenant_id: str
    start: datetime
    end: datetime


class UsageLedger(Protocol):
    """The durable usage records (PostgreSQL), the source of truth of every counter."""

    async def append(
        self, records: Sequence[UsageRecord], alerts: Sequence[ThresholdAlert]
    ) -> list[AppendStatus]: ...
    async def window_totals(self, counters: Sequence[CounterRef]) -> list[int]:
        """Each counter's total in the ledger, in one query."""
        ...

    async def totals(self, periods: Sequence[TenantPeriod]) -> list[dict[str, int]]:
        """Quantity per key of each tenant's records in [start, end), in one query."""
        ...


class Invalidations(Protocol):
    """Tells every process that a tenant's (or, for None, everyone's) entitlements changed."""

    async def publish(self, tenant_id: str | None) -> None: ...


class UsageMetrics(Protocol):
    """What checks, the counter cache and the counter audit report; an adapter keeps the figures."""

    def check_decided(self, decision: CheckDecision) -> None: ...
    def counter_lookup(self, cached: bool) -> None: ...
    def counters_audited(self, checked: int, drifted: int, drift_units: int) -> None: ...
