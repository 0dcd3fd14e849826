"""Use cases on the hierarchy and its signals, and the in-memory model that serves reads and scans."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TypeVar

from billing_common.errors import NotFound, Violations
from billing_common.tiers import Tier
from tier.app.ports import EstateDelta, EstateStore, TierMetrics, UpsertCounts
from tier.domain.accounts import (
    AccountKind,
    Database,
    Distributor,
    EndUser,
    Signal,
    SignalKind,
    normalize_signal_value,
)
from tier.domain.estate import Estate, TierRecord

MAX_ID_LENGTH = 200
MAX_BATCH = 10_000

Record = Distributor | EndUser | Database
R = TypeVar("R", Distributor, EndUser, Database)
PathOf = Callable[[int, Record], str]


@dataclass(frozen=True)
class HierarchyNode:
    account_id: str
    kind: AccountKind
    name: str
    active: bool
    tier: Tier | None
    children: list[HierarchyNode] = field(default_factory=list)


@dataclass(frozen=True)
class SignalReport:
    """A pushed signal as received, before validation."""

    account_id: str
    kind: SignalKind | None
    value: str
    source: str
    observed_at: datetime | None


@dataclass(frozen=True)
class ImportCounts:
    distributors: int = 0
    end_users: int = 0
    databases: int = 0


def _id_of(record: Record) -> str:
    if isinstance(record, Distributor):
        return record.distributor_id
    if isinstance(record, EndUser):
        return record.end_user_id
    return record.database_id


_KIND_OF_RECORD = {
    Distributor: AccountKind.DISTRIBUTOR,
    EndUser: AccountKind.END_USER,
    Database: AccountKind.DATABASE,
}


class Accounts:
    """The hierarchy and signals: validated writes to the store, mirrored into the in-memory model.

    Another process's writes reach this model through `refresh` (before every scan, periodically,
    and when a lookup misses); `rebuild` reloads everything.
    """

    def __init__(self, store: EstateStore, metrics: TierMetrics) -> None:
        self._store = store
        self._metrics = metrics
        self.model = Estate()
        self._refreshing = asyncio.Lock()
        # Revisions of this process's own writes that the model already holds: refresh skips them.
        self._own_revisions: set[int] = set()

    # ------------------------------------------------------------------ the model

    async def refresh(self) -> None:
        async with self._refreshing:
            _merge(self.model, await self._store.load(self.model.revision, sorted(self._own_revisions)))
            self._own_revisions = {r for r in self._own_revisions if r > self.model.revision}

    def note_own_write(self, revision: int) -> None:
        self._own_revisions.add(revision)

    async def rebuild(self) -> tuple[int, float]:
        """Load the whole estate into a fresh model and swap it in; (accounts, seconds)."""
        started = time.perf_counter()
        async with self._refreshing:
            fresh = Estate()
            _merge(fresh, await self._store.load(0))
            self.model = fresh
            self._own_revisions = set()
        return fresh.size, time.perf_counter() - started

    async def _lookup(self, account_id: str) -> AccountKind:
        kind = self.model.kind_of(account_id)
        self._metrics.cache_lookup(kind is not None)
        if kind is None:
            if not account_id or not await self._store.existing([account_id]):
                raise NotFound(f"no account {account_id!r}")
            await self.refresh()
            kind = self.model.kind_of(account_id)
            if kind is None:
                raise NotFound(f"no account {account_id!r}")
        return kind

    # ------------------------------------------------------------------ writes

    async def upsert_distributors(self, rows: Sequence[Distributor]) -> UpsertCounts:
        await self._validate(rows, "distributors")
        counts, revision = await self._store.upsert_distributors(rows)
        self.note_own_write(revision)
        for row in rows:
            self.model.put_distributor(row)
        return counts

    async def upsert_end_users(self, rows: Sequence[EndUser]) -> UpsertCounts:
        await self._validate(rows, "end_users")
        counts, revision = await self._store.upsert_end_users(rows)
        self.note_own_write(revision)
        for row in rows:
            self.model.put_end_user(row)
        return counts

    async def upsert_databases(self, rows: Sequence[Database]) -> UpsertCounts:
        await self._validate(rows, "databases")
        counts, revision = await self._store.upsert_databases(rows)
        self.note_own_write(revision)
        for row in rows:
            self.model.put_database(row)
        return counts

    async def bulk_import(self, records: Sequence[tuple[int, Record]]) -> ImportCounts:
        """One slice of an import stream (records with their position in it), parents before children.

        Slices are stored as they come: a bad record stops the import, earlier slices stay (a retry
        of the whole stream is harmless, upserts being idempotent).
        """
        distributors = [r for _, r in records if isinstance(r, Distributor)]
        end_users = [r for _, r in records if isinstance(r, EndUser)]
        databases = [r for _, r in records if isinstance(r, Database)]
        await self._validate_import(records)
        if distributors:
            self.note_own_write((await self._store.upsert_distributors(distributors))[1])
            for distributor in distributors:
                self.model.put_distributor(distributor)
        if end_users:
            self.note_own_write((await self._store.upsert_end_users(end_users))[1])
            for end_user in end_users:
                self.model.put_end_user(end_user)
        if databases:
            self.note_own_write((await self._store.upsert_databases(databases))[1])
            for database in databases:
                self.model.put_database(database)
        return ImportCounts(len(distributors), len(end_users), len(databases))

    async def report_signals(self, reports: Sequence[SignalReport]) -> tuple[int, int]:
        """Store pushed signals; (accepted, stale). A signal older than the one held is stale, and so
        is the older of two reports of the same account and kind in one batch."""
        violations = Violations()
        violations.check(len(reports) <= MAX_BATCH, "signals", f"at most {MAX_BATCH} per call")
        signals: list[Signal] = []
        for index, report in enumerate(reports):
            path = f"signals[{index}]"
            violations.check(bool(report.account_id), f"{path}.account_id", "is required")
            violations.check(bool(report.source), f"{path}.source", "is required (e.g. push, workos)")
            violations.check(report.observed_at is not None, f"{path}.observed_at", "is required")
            if report.kind is None:
                violations.add(f"{path}.kind", "is required")
                continue
            try:
                value = normalize_signal_value(report.kind, report.value)
            except ValueError as error:
                violations.add(f"{path}.value", str(error))
                continue
            if report.observed_at is not None:
                signals.append(
                    Signal(report.account_id, report.kind, value, report.source, report.observed_at)
                )
        violations.raise_if_any()
        newest: dict[tuple[str, SignalKind], Signal] = {}
        for signal in signals:
            held = newest.get((signal.account_id, signal.kind))
            if held is None or signal.observed_at >= held.observed_at:
                newest[(signal.account_id, signal.kind)] = signal
        applied = await self.store_signals(list(newest.values()))
        return len(applied), len(signals) - len(applied)

    async def store_signals(self, signals: Sequence[Signal]) -> list[Signal]:
        """Persist and mirror signals (already normalized); the ones that were not stale."""
        if not signals:
            return []
        accepted, revision = await self._store.save_signals(signals)
        self.note_own_write(revision)
        applied = [signal for signal, ok in zip(signals, accepted, strict=True) if ok]
        for signal in applied:
            self.model.put_signal(signal)
        return applied

    # ------------------------------------------------------------------ reads

    async def account_tier(self, account_id: str) -> tuple[AccountKind, TierRecord | None]:
        kind = await self._lookup(account_id)
        return kind, self.model.tiers.get(account_id)

    async def hierarchy(self, account_id: str) -> HierarchyNode:
        kind = await self._lookup(account_id)
        model = self.model
        if kind is AccountKind.DISTRIBUTOR:
            distributor = model.distributors[account_id]
            return HierarchyNode(
                account_id,
                kind,
                distributor.name,
                distributor.active,
                self._tier(account_id),
                [self._end_user_node(member) for member in sorted(model.end_users_of.get(account_id, ()))],
            )
        if kind is AccountKind.END_USER:
            return self._end_user_node(account_id)
        return self._database_node(account_id)

    async def require(self, account_id: str) -> AccountKind:
        return await self._lookup(account_id)

    def _tier(self, account_id: str) -> Tier | None:
        record = self.model.tiers.get(account_id)
        return None if record is None else record.decision.tier

    def _end_user_node(self, end_user_id: str) -> HierarchyNode:
        end_user = self.model.end_users[end_user_id]
        return HierarchyNode(
            end_user_id,
            AccountKind.END_USER,
            end_user.name,
            end_user.active,
            self._tier(end_user_id),
            [self._database_node(d) for d in sorted(self.model.databases_of.get(end_user_id, ()))],
        )

    def _database_node(self, database_id: str) -> HierarchyNode:
        database = self.model.databases[database_id]
        return HierarchyNode(
            database_id, AccountKind.DATABASE, database.company_name, database.active, self._tier(database_id)
        )

    # ------------------------------------------------------------------ validation

    async def _validate(self, rows: Sequence[R], path: str) -> None:
        violations = Violations()
        violations.check(len(rows) <= MAX_BATCH, path, f"at most {MAX_BATCH} per call")
        await self._check_records(
            [(index, row) for index, row in enumerate(rows)], lambda i, _: f"{path}[{i}]", violations
        )
        violations.raise_if_any()

    async def _validate_import(self, records: Sequence[tuple[int, Record]]) -> None:
        violations = Violations()
        await self._check_records(
            records, lambda i, r: f"records[{i}].{_KIND_OF_RECORD[type(r)].value}", violations
        )
        violations.raise_if_any()

    async def _check_records(
        self, records: Sequence[tuple[int, Record]], path_of: PathOf, violations: Violations
    ) -> None:
        model = self.model
        in_batch: dict[str, AccountKind] = {}
        parents: list[tuple[str, str, AccountKind]] = []  # (field path, parent id, parent kind)
        for index, record in records:
            path = path_of(index, record)
            account_id = _id_of(record)
            kind = _KIND_OF_RECORD[type(record)]
            id_field = f"{path}.{kind.value}_id"
            if not account_id or len(account_id) > MAX_ID_LENGTH:
                violations.add(id_field, f"is required, at most {MAX_ID_LENGTH} characters")
                continue
            if account_id in in_batch:
                violations.add(id_field, f"{account_id!r} appears twice in the batch")
                continue
            in_batch[account_id] = kind
            known = model.kind_of(account_id)
            if known is not None and known is not kind:
                violations.add(id_field, f"{account_id!r} is already a {known.value}")
            if isinstance(record, EndUser) and record.distributor_id:
                parents.append((f"{path}.distributor_id", record.distributor_id, AccountKind.DISTRIBUTOR))
            elif isinstance(record, Database):
                if not record.end_user_id:
                    violations.add(f"{path}.end_user_id", "is required")
                else:
                    parents.append((f"{path}.end_user_id", record.end_user_id, AccountKind.END_USER))
        unknown = [p for p in parents if model.kind_of(p[1]) is None and in_batch.get(p[1]) is None]
        if unknown:
            stored = await self._store.existing(sorted({p[1] for p in unknown}))
            if stored:
                await self.refresh()
        for field_path, parent_id, parent_kind in parents:
            found = in_batch.get(parent_id) or model.kind_of(parent_id)
            if found is None:
                violations.add(field_path, f"no {parent_kind.value} {parent_id!r}")
            elif found is not parent_kind:
                violations.add(field_path, f"{parent_id!r} is a {found.value}, not a {parent_kind.value}")


def _merge(model: Estate, delta: EstateDelta) -> None:
    for distributor in delta.distributors:
        model.put_distributor(distributor)
    for end_user in delta.end_users:
        model.put_end_user(end_user)
    for database in delta.databases:
        model.put_database(database)
    for signal in delta.signals:
        model.put_signal(signal)
    for account_id, record in delta.tiers:
        current = model.tiers.get(account_id)
        if current is None or current.change_id <= record.change_id:
            model.put_tier(account_id, record)
    model.revision = max(model.revision, delta.revision)
