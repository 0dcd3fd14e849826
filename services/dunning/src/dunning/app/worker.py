"""The attempt worker: every pod runs one; together they drain the due attempts.

Work is shared through the database: due cases are claimed with FOR UPDATE SKIP LOCKED and a
lease (the case's due time moves to the lease's end, so a crashed pod's attempt is taken over
when it runs out). A Redis lock per case keeps two workers from calling recurring for the same
case at once, and its fencing token is checked when the outcome is written, so a worker that
lost its lock (a long pause) cannot overwrite a newer holder's result. The idempotency key
`<case id>:<attempt number>` makes any repeated call harmless: recurring charges once per key.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from billing_common import telemetry
from billing_common.clock import Clock
from billing_common.db import StaleFencingToken
from billing_common.locks import Locks
from billing_common.suite_clock import pause
from dunning.app.cases import planning_for
from dunning.app.ports import CaseMetrics, CaseStore, Recurring
from dunning.app.statistics import OutcomeStatistics
from dunning.domain import cases as decide
from dunning.domain.cases import ResultKind
from dunning.domain.model import CaseState

log = logging.getLogger(__name__)

# An attempt made this soon after what scheduled it continues that trace; a later one (days later,
# as the schedule usually has it) starts its own trace with a link to its cause.
CONTINUE_TRACE_WITHIN = timedelta(hours=1)


@dataclass(frozen=True)
class WorkerConfig:
    batch_size: int = 32
    concurrency: int = 16
    lease: timedelta = timedelta(minutes=2)
    # TTL of a case's lock, extended while its attempt runs.
    case_lock_ttl: timedelta = timedelta(seconds=30)
    poll_interval: timedelta = timedelta(seconds=1)
    # A pending payment (ACH) is asked about again after this long, with the same key.
    pending_recheck: timedelta = timedelta(hours=6)
    # Recurring unreachable: the same attempt is tried again after this long.
    unavailable_backoff: timedelta = timedelta(minutes=1)


@dataclass(frozen=True)
class ClaimedAttempt:
    case_id: str
    invoice_id: str
    attempt: int
    # The trace that scheduled the attempt (or opened the case): the attempt's span continues it.
    trace_context: Mapping[str, str] = field(default_factory=dict, compare=False)

    @property
    def idempotency_key(self) -> str:
        return f"{self.case_id}:{self.attempt}"

    @property
    def lock_name(self) -> str:
        return f"case:{self.case_id}"


class AttemptWorker:
    def __init__(
        self,
        store: CaseStore,
        recurring: Recurring,
        locks: Locks,
        statistics: OutcomeStatistics,
        clock: Clock,
        config: WorkerConfig,
        metrics: CaseMetrics,
    ) -> None:
        self._store = store
        self._recurring = recurring
        self._metrics = metrics
        self._locks = locks
        self._statistics = statistics
        self._clock = clock
        self._config = config
        self._slots = asyncio.Semaphore(config.concurrency)

    async def run_forever(self) -> None:
        while True:
            reminded = await self.send_reminders()
            claimed = await self.run_once()
            if claimed < self._config.batch_size and reminded < self._config.batch_size:
                await pause(self._clock, self._config.poll_interval.total_seconds())

    async def run_once(self) -> int:
        """Claim one batch of due cases and make their attempts; returns how many were claimed."""
        claims = await self.claim()
        await asyncio.gather(*(self._attempt_guarded(claim) for claim in claims))
        return len(claims)

    async def claim(self) -> list[ClaimedAttempt]:
        now = self._clock.now()
        lease_until = now + self._config.lease
        claims: list[ClaimedAttempt] = []
        async with self._store.transaction() as session:
            due = await session.claim_due(now, self._config.batch_size)
            contexts = await session.trace_contexts([case.case_id for case in due]) if due else {}
            for case in due:
                stored = contexts.get(case.case_id, {})
                if case.state is CaseState.AWAITING_PAYMENT_METHOD:
                    with _case_span("dunning.window_elapsed", case.case_id, stored):
                        planning = await planning_for(session, self._statistics, case.invoice.merchant_id)
                        await session.apply(decide.window_elapsed(case, now, planning))
                    continue
                if case.state is CaseState.RETRY_SCHEDULED:
                    change = decide.start_attempt(case, now, lease_until)
                else:
                    change = decide.take_over_attempt(case, now, lease_until)
                current = change.case.current_attempt
                with telemetry.within(stored):  # the attempt's start is part of the trace that caused it
                    await session.apply(change)
                if current is not None:
                    claims.append(
                        ClaimedAttempt(case.case_id, case.invoice.invoice_id, current.number, stored)
                    )
        return claims

    async def _attempt_guarded(self, claim: ClaimedAttempt) -> None:
        async with self._slots:
            try:
                with _case_span("dunning.attempt", claim.case_id, claim.trace_context) as span:
                    span.set_attributes({"invoice.id": claim.invoice_id, "attempt.number": claim.attempt})
                    await self.attempt(claim)
            except StaleFencingToken:
                log.warning(
                    "case lock lost during the attempt; the newer holder records it",
                    extra={"case_id": claim.case_id},
                )
            except Exception:
                # The lease runs out and the same attempt (same key) is made again.
                log.exception("attempt failed; it will be taken over", extra={"case_id": claim.case_id})

    async def attempt(self, claim: ClaimedAttempt) -> None:
        async with self._locks.try_hold(claim.lock_name, self._config.case_lock_ttl) as lease:
            if lease is None:
                log.info("another worker holds the case", extra={"case_id": claim.case_id})
                return
            async with self._store.transaction() as session:
                await session.check_fence(lease)
                case = await session.get(claim.case_id)
            current = case.current_attempt if case else None
            if (
                case is None
                or case.state is not CaseState.ATTEMPTING
                or current is None
                or (current.number != claim.attempt)
            ):
                return  # paid, voided, paused or reset since the claim: no charge
            result = await self._recurring.retry_invoice_payment(claim.invoice_id, claim.idempotency_key)
            self._metrics.attempt_answered(result.kind)
            log.info(
                "attempt answered",
                extra={
                    "case_id": claim.case_id,
                    "attempt": claim.attempt,
                    "result": result.kind.value,
                    "detail": result.detail,
                },
            )
            now = self._clock.now()
            wait = (
                self._config.pending_recheck
                if result.kind is ResultKind.PENDING
                else self._config.unavailable_backoff
            )
            async with self._store.transaction() as session:
                await session.check_fence(lease)
                case = await session.get(claim.case_id, for_update=True)
                if case is None:
                    return
                planning = await planning_for(session, self._statistics, case.invoice.merchant_id)
                change = decide.record_outcome(case, claim.attempt, result, now, planning, now + wait)
                if change.changed:
                    await session.apply(change)

    async def send_reminders(self) -> int:
        now = self._clock.now()
        async with self._store.transaction() as session:
            due = await session.due_reminders(now, self._config.batch_size)
            contexts = await session.trace_contexts([case.case_id for case in due]) if due else {}
            for case in due:
                with _case_span("dunning.reminder", case.case_id, contexts.get(case.case_id, {})):
                    await session.apply(decide.send_reminder(case, now))
        return len(due)


def _case_span(name: str, case_id: str, stored: Mapping[str, str]) -> AbstractContextManager[Any]:
    """The span of work on a case, under the trace that caused it (or linked to it, when old)."""
    return telemetry.span(
        name, parent=stored, fresh_for=CONTINUE_TRACE_WITHIN, keep=True, attributes={"case.id": case_id}
    )
