"""What the use cases need from the outside world; adapters implement these."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

import asyncpg

from billing_common.locks import Lease
from dunning.domain.cases import AttemptResult, Change, ResultKind
from dunning.domain.estimator import OutcomeCounts
from dunning.domain.model import Case, CaseState, Transition
from dunning.domain.policy import RetryPolicy


class CaseSession(Protocol):
    """Cases read and written inside one transaction."""

    async def get(self, case_id: str, *, for_update: bool = False) -> Case | None: ...
    async def get_by_invoice(self, invoice_id: str, *, for_update: bool = False) -> Case | None: ...
    async def get_many(self, case_ids: Sequence[str], *, for_update: bool = False) -> dict[str, Case]:
        """The cases found, by id (a batch's cases read in one round trip)."""
        ...

    async def open_cases_of_subscription(self, subscription_id: str) -> list[Case]:
        """Unfinished cases of a subscription, locked for update."""
        ...

    async def claim_due(self, now: datetime, limit: int) -> list[Case]:
        """Cases whose due time has come, locked; rows another worker holds are skipped."""
        ...

    async def due_reminders(self, now: datetime, limit: int) -> list[Case]: ...
    async def policy(self, merchant_id: str) -> RetryPolicy | None:
        """The merchant's own policy, else the stored default, else None."""
        ...

    async def insert(self, change: Change) -> bool:
        """Store a new case; False (and nothing stored) when its invoice already has one."""
        ...

    async def apply(self, change: Change) -> Case:
        """Store a change if the case still has the version it was read at (else Conflict)."""
        ...

    async def apply_all(
        self, changes: Sequence[Change], traces: Sequence[Mapping[str, str]] | None = None
    ) -> list[Case]:
        """Store changes set-wise, all or none, as `apply` stores one; each change's rows and log
        lines join its trace in `traces` (by default the current one)."""
        ...

    async def stale_fences(self, leases: Sequence[Lease]) -> list[Lease]:
        """Record the fencing token of each lease still current; those a newer holder has already
        written under are returned (their items must not be written)."""
        ...

    async def outcome_counts(self, since: datetime) -> OutcomeCounts:
        """Past attempts' outcomes, read in this session: a handler holding the inbox's connection
        never waits for a second one (many at once would hold the whole pool and wait forever)."""
        ...

    async def trace_contexts(self, case_ids: Sequence[str]) -> dict[str, dict[str, str]]:
        """The trace context that scheduled each case's current attempt, else the one that opened it."""
        ...


@dataclass(frozen=True)
class CaseFilter:
    state: CaseState | None = None
    merchant_id: str = ""
    account_id: str = ""


class CaseStore(Protocol):
    def transaction(self) -> AbstractAsyncContextManager[CaseSession]: ...
    def within(self, conn: asyncpg.Connection) -> CaseSession:
        """A session on a connection whose transaction the caller owns (an event's inbox)."""
        ...

    async def history(self, case_id: str) -> list[Transition]: ...
    async def list_cases(self, where: CaseFilter, after: int, limit: int) -> list[tuple[int, Case]]:
        """Cases in creation order after position `after`, with their positions."""
        ...

    async def get_policy(self, merchant_id: str) -> RetryPolicy | None: ...
    async def put_policy(self, policy: RetryPolicy, now: datetime) -> None: ...


class CaseLocks(Protocol):
    """The per-case locks a batch of attempts holds (the service's Redis locks)."""

    def try_hold_many(
        self, names: Sequence[str], ttl: timedelta
    ) -> AbstractAsyncContextManager[dict[str, Lease]]:
        """Hold those of `names` that no one else holds, for the block: their leases by name."""
        ...


class Recurring(Protocol):
    async def retry_invoice_payment(self, invoice_id: str, idempotency_key: str) -> AttemptResult: ...


class CaseMetrics(Protocol):
    """What the attempts and the case changes report; an adapter keeps the figures."""

    def attempt_answered(self, kind: ResultKind) -> None: ...
    def case_ended(self, state: CaseState, open_for: timedelta) -> None:
        """Called once the change that ended the case is committed."""
        ...
