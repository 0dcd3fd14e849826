"""What the use cases need from the outside world; adapters implement these."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from billing_common.locks import Lease
from billing_common.tiers import Tier
from tier.domain.accounts import Database, Distributor, EndUser, Signal, SignalKind
from tier.domain.estate import PlannedChange, TierRecord
from tier.domain.scans import Scan, ScanKind, ScanState


@dataclass(frozen=True)
class UpsertCounts:
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0


@dataclass
class EstateDelta:
    """Rows written since a revision (or all of them), up to `revision`, which every writer before it
    has committed."""

    revision: int
    distributors: list[Distributor] = field(default_factory=list)
    end_users: list[EndUser] = field(default_factory=list)
    databases: list[Database] = field(default_factory=list)
    signals: list[Signal] = field(default_factory=list)
    tiers: list[tuple[str, TierRecord]] = field(default_factory=list)


class EstateStore(Protocol):
    """The hierarchy and signals. Every write returns the revision it stamped its rows with."""

    async def upsert_distributors(self, rows: Sequence[Distributor]) -> tuple[UpsertCounts, int]: ...
    async def upsert_end_users(self, rows: Sequence[EndUser]) -> tuple[UpsertCounts, int]: ...
    async def upsert_databases(self, rows: Sequence[Database]) -> tuple[UpsertCounts, int]: ...

    async def save_signals(self, signals: Sequence[Signal]) -> tuple[list[bool], int]:
        """Store the newer observations; per signal, False when a newer one is already stored."""
        ...

    async def existing(self, account_ids: Sequence[str]) -> dict[str, str]:
        """The kind of each of these ids the store knows (for ids the local model has not seen yet)."""
        ...

    async def load(self, since_revision: int, skip: Collection[int] = ()) -> EstateDelta:
        """Everything written after `since_revision` (0: the whole estate), except rows stamped with
        one of the `skip` revisions (this process's own writes, already in its model)."""
        ...


@dataclass(frozen=True)
class AppliedChange:
    change_id: int
    planned: PlannedChange


@dataclass(frozen=True)
class HistoryEntry:
    change_id: int
    account_id: str
    kind: str
    previous_tier: Tier | None
    new_tier: Tier
    rule_id: str
    rule_set_version: str
    evidence_before: tuple[tuple[str, str], ...]
    evidence_after: tuple[tuple[str, str], ...]
    scan_id: str
    cause: str
    billed_account_id: str
    effective_at: datetime


class TierStore(Protocol):
    async def apply_changes(
        self,
        changes: Sequence[PlannedChange],
        *,
        scan_id: str,
        effective_at: datetime,
        lease: Lease,
    ) -> tuple[list[AppliedChange], int]:
        """Record the changes whose account still has the tier they were planned from, each with its
        history row (and, for a change of an existing tier, its tier.changed event) in the same
        transaction as the fencing check. Changes another writer got to first are left out."""
        ...

    async def history(self, account_id: str) -> list[HistoryEntry]: ...
    async def tier_at(self, account_id: str, at: datetime) -> HistoryEntry | None: ...
    async def changes(
        self, since: datetime | None, scan_id: str, after_change_id: int, limit: int
    ) -> list[HistoryEntry]: ...


class ScanStore(Protocol):
    async def enqueue(
        self,
        kind: ScanKind,
        trigger: str,
        idempotency_key: str,
        queued_at: datetime,
        trace_id: str,
        trace_context: dict[str, str],
    ) -> tuple[Scan, bool]:
        """The scan queued under this key (created now: True). Raises FailedPrecondition when the
        key was used for another kind."""
        ...

    async def queued_kinds(self) -> list[ScanKind]: ...

    async def claim(
        self, kind: ScanKind, started_at: datetime, lease: Lease
    ) -> tuple[Scan, dict[str, str]] | None:
        """Mark the oldest queued scan of the kind running (and any scan of the kind left running by
        a holder that lost the lock failed); the scan and its trace context, or None."""
        ...

    async def finish(self, scan: Scan) -> None: ...
    async def get(self, scan_id: str) -> Scan | None: ...
    async def page(self, before_seq: int, limit: int) -> list[tuple[int, Scan]]: ...


class SignalProvider(Protocol):
    """A pull source of one kind of signal, read during scans."""

    name: str
    kind: SignalKind

    async def fetch(self, observed_at: datetime) -> list[Signal]:
        """The current value for every account the source knows about."""
        ...


class ProviderError(Exception):
    """A signal provider could not answer (unreachable, refused, malformed reply)."""


class TierMetrics(Protocol):
    def scan_finished(
        self, kind: ScanKind, state: ScanState, seconds: float, evaluated: int, changes: int
    ) -> None: ...
    def cache_lookup(self, hit: bool) -> None: ...
    def provider_failed(self, provider: str) -> None: ...
