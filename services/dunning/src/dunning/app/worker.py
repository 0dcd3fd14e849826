"""The attempt worker: every pod runs one; together they drain the due attempts.

Work is shared through the database: due cases are claimed in batches with FOR UPDATE SKIP
LOCKED and a lease (the case's due time moves to the lease's end, so a crashed pod's attempt is
taken over when it runs out). A Redis lock per case keeps two workers from calling recurring for
the same case at once, and its fencing token is checked when the outcome is written, so a worker
that lost its lock (a long pause) cannot overwrite a newer holder's result. The idempotency key
`<case id>:<attempt number>` makes any repeated call harmless: recurring charges once per key.

A batch is one claim, one re-read of its cases, its calls at once, and one transaction that
records every answer: the domain decides each case, the store writes them set-wise.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from billing_common import telemetry
from billing_common.clock import Clock
from billing_common.locks import Lease
from billing_common.suite_clock import pause
from dunning.app.cases import planning_for
from dunning.app.ports import CaseLocks, CaseMetrics, CaseSession, CaseStore, Recurring
from dunning.app.statistics import OutcomeStatistics
from dunning.domain import cases as decide
from dunning.domain.cases import AttemptResult, Change, ResultKind
from dunning.domain.model import Case, CaseState
from dunning.domain.schedule import Planning

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
        locks: CaseLocks,
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
        """Claim one batch of due cases, make their attempts, record the answers together;
        returns how many were claimed."""
        claims = await self.claim()
        if claims:
            await self.attempt_all(claims)
        return len(claims)

    async def claim(self) -> list[ClaimedAttempt]:
        now = self._clock.now()
        lease_until = now + self._config.lease
        claims: list[ClaimedAttempt] = []
        changes: list[Change] = []
        traces: list[Mapping[str, str]] = []
        async with self._store.transaction() as session:
            due = await session.claim_due(now, self._config.batch_size)
            contexts = await session.trace_contexts([case.case_id for case in due]) if due else {}
            plannings = _Plannings(session, self._statistics)
            for case in due:
                stored = contexts.get(case.case_id, {})
                if case.state is CaseState.AWAITING_PAYMENT_METHOD:
                    with _case_span("dunning.window_elapsed", case.case_id, stored):
                        planning = await plannings.of(case.invoice.merchant_id)
                        changes.append(decide.window_elapsed(case, now, planning))
                        traces.append(telemetry.capture())
                    continue
                if case.state is CaseState.RETRY_SCHEDULED:
                    change = decide.start_attempt(case, now, lease_until)
                else:
                    change = decide.take_over_attempt(case, now, lease_until)
                changes.append(change)
                traces.append(stored)  # the attempt's start is part of the trace that caused it
                current = change.case.current_attempt
                if current is not None:
                    claims.append(
                        ClaimedAttempt(case.case_id, case.invoice.invoice_id, current.number, stored)
                    )
            await session.apply_all(changes, traces)
        return claims

    async def attempt(self, claim: ClaimedAttempt) -> None:
        """One claimed attempt: a batch of one."""
        await self.attempt_all([claim])

    async def attempt_all(self, claims: Sequence[ClaimedAttempt]) -> None:
        """Make the claimed attempts under their case locks and record every answer in one
        transaction; an attempt whose lock, fence or write failed is taken over when its lease ends."""
        try:
            names = [claim.lock_name for claim in claims]
            async with self._locks.try_hold_many(names, self._config.case_lock_ttl) as held:
                leases = {claim: held[claim.lock_name] for claim in claims if claim.lock_name in held}
                for claim in claims:
                    if claim not in leases:
                        log.info("another worker holds the case", extra={"case_id": claim.case_id})
                if not leases:
                    return
                async with self._store.transaction() as session:
                    fenced = await _fenced(session, leases)
                    cases = await session.get_many([claim.case_id for claim in fenced])
                # Paid, voided, paused or reset since the claim: no charge.
                still_due = [claim for claim in fenced if _still_due(cases.get(claim.case_id), claim)]
                called = await asyncio.gather(*(self._call(c) for c in still_due), return_exceptions=True)
                answers: list[_Answer] = []
                for claim, answer in zip(still_due, called, strict=True):
                    if isinstance(answer, BaseException):
                        log.error(
                            "attempt failed; it will be taken over",
                            exc_info=answer,
                            extra={"case_id": claim.case_id},
                        )
                    else:
                        answers.append(answer)
                await self._record(answers, leases)
        except Exception:
            log.exception("attempts failed; they will be taken over", extra={"cases": len(claims)})

    async def _call(self, claim: ClaimedAttempt) -> _Answer:
        async with self._slots:
            with _case_span("dunning.attempt", claim.case_id, claim.trace_context) as span:
                span.set_attributes({"invoice.id": claim.invoice_id, "attempt.number": claim.attempt})
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
                return _Answer(claim, result, self._clock.now(), telemetry.capture())

    async def _record(self, answers: Sequence[_Answer], leases: Mapping[ClaimedAttempt, Lease]) -> None:
        if not answers:
            return
        changes: list[Change] = []
        traces: list[Mapping[str, str]] = []
        async with self._store.transaction() as session:
            fenced = set(await _fenced(session, {a.claim: leases[a.claim] for a in answers}))
            cases = await session.get_many(
                [a.claim.case_id for a in answers if a.claim in fenced], for_update=True
            )
            plannings = _Plannings(session, self._statistics)
            for answer in answers:
                case = cases.get(answer.claim.case_id)
                if case is None:
                    continue
                wait = (
                    self._config.pending_recheck
                    if answer.result.kind is ResultKind.PENDING
                    else self._config.unavailable_backoff
                )
                planning = await plannings.of(case.invoice.merchant_id)
                change = decide.record_outcome(
                    case, answer.claim.attempt, answer.result, answer.at, planning, answer.at + wait
                )
                if change.changed:
                    changes.append(change)
                    traces.append(answer.trace)
            await session.apply_all(changes, traces)

    async def send_reminders(self) -> int:
        now = self._clock.now()
        async with self._store.transaction() as session:
            due = await session.due_reminders(now, self._config.batch_size)
            contexts = await session.trace_contexts([case.case_id for case in due]) if due else {}
            changes: list[Change] = []
            traces: list[Mapping[str, str]] = []
            for case in due:
                with _case_span("dunning.reminder", case.case_id, contexts.get(case.case_id, {})):
                    changes.append(decide.send_reminder(case, now))
                    traces.append(telemetry.capture())
            await session.apply_all(changes, traces)
        return len(due)


@dataclass(frozen=True)
class _Answer:
    claim: ClaimedAttempt
    result: AttemptResult
    at: datetime
    trace: Mapping[str, str]


class _Plannings:
    """Each merchant's planning read once per batch."""

    def __init__(self, session: CaseSession, statistics: OutcomeStatistics) -> None:
        self._session = session
        self._statistics = statistics
        self._by_merchant: dict[str, Planning] = {}

    async def of(self, merchant_id: str) -> Planning:
        found = self._by_merchant.get(merchant_id)
        if found is None:
            found = self._by_merchant[merchant_id] = await planning_for(
                self._session, self._statistics, merchant_id
            )
        return found


async def _fenced(session: CaseSession, leases: Mapping[ClaimedAttempt, Lease]) -> list[ClaimedAttempt]:
    """The claims whose lease is still the newest holder's, fenced in this transaction; a worker
    that lost its lock (a long pause) leaves the case to the newer holder."""
    stale = {lease.name for lease in await session.stale_fences(list(leases.values()))}
    for claim in leases:
        if claim.lock_name in stale:
            log.warning(
                "case lock lost during the attempt; the newer holder records it",
                extra={"case_id": claim.case_id},
            )
    return [claim for claim in leases if claim.lock_name not in stale]


def _still_due(case: Case | None, claim: ClaimedAttempt) -> bool:
    current = case.current_attempt if case else None
    return (
        case is not None
        and case.state is CaseState.ATTEMPTING
        and current is not None
        and current.number == claim.attempt
    )


def _case_span(name: str, case_id: str, stored: Mapping[str, str]) -> AbstractContextManager[Any]:
    """The span of work on a case, under the trace that caused it (or linked to it, when old)."""
    return telemetry.span(
        name, parent=stored, fresh_for=CONTINUE_TRACE_WITHIN, keep=True, attributes={"case.id": case_id}
    )
