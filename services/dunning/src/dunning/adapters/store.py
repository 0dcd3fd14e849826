"""Cases, attempts, history, policies and outcomes in PostgreSQL; events through the outbox.

Every change is written with an optimistic version check (`version = $n`), in one transaction
with its history rows, its dunning.* events and, for a finished attempt, its training row.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

import asyncpg

from billing_common import db, telemetry
from billing_common.errors import Conflict
from billing_common.events import Outbox
from billing_common.locks import Lease
from billing_common.money import Money
from billing_common.payments import DeclineKind, FailureType
from billing_common.subscriptions import ExhaustedAction
from billing_common.suite_clock import DueWork
from dunning.adapters.codec import event_message
from dunning.app.ports import CaseFilter, CaseMetrics
from dunning.domain.cases import Change
from dunning.domain.estimator import AttemptContext, OutcomeCounts
from dunning.domain.model import (
    TERMINAL_STATES,
    Attempt,
    AttemptOutcome,
    Case,
    CaseState,
    Failure,
    InvoiceRef,
    Transition,
)
from dunning.domain.policy import AdaptiveSchedule, FixedSchedule, RetryPolicy

log = logging.getLogger(__name__)

CASE_COLUMNS = """case_id, invoice_id, subscription_id, account_id, merchant_id, amount_minor, currency,
    state, failure_type, decline_kind, decline_code, retryable, first_failed_at, opened_at, due_at,
    reminder_at, ended_at, version"""
ACTIVE_DUE_STATES = [
    CaseState.RETRY_SCHEDULED.value,
    CaseState.ATTEMPTING.value,
    CaseState.AWAITING_PAYMENT_METHOD.value,
]


def _case(row: asyncpg.Record, attempts: Sequence[Attempt]) -> Case:
    return Case(
        case_id=str(row["case_id"]),
        invoice=InvoiceRef(
            row["invoice_id"],
            row["subscription_id"],
            row["account_id"],
            row["merchant_id"],
            Money(row["amount_minor"], row["currency"]),
        ),
        state=CaseState(row["state"]),
        failure=Failure(
            FailureType(row["failure_type"]),
            DeclineKind(row["decline_kind"]),
            row["decline_code"],
            row["retryable"],
        ),
        first_failed_at=row["first_failed_at"],
        opened_at=row["opened_at"],
        attempts=tuple(attempts),
        due_at=row["due_at"],
        reminder_at=row["reminder_at"],
        ended_at=row["ended_at"],
        version=row["version"],
    )


def _attempt(row: asyncpg.Record) -> Attempt:
    return Attempt(
        number=row["number"],
        scheduled_at=row["scheduled_at"],
        estimated_success_bp=row["estimated_success_bp"],
        sample_size=row["sample_size"],
        reason=row["reason"],
        outcome=AttemptOutcome(row["outcome"]),
        decline_code=row["decline_code"],
        attempted_at=row["attempted_at"],
    )


def _policy(row: asyncpg.Record) -> RetryPolicy:
    schedule: FixedSchedule | AdaptiveSchedule
    if row["schedule_kind"] == "fixed":
        schedule = FixedSchedule(tuple(row["day_offsets"]))
    else:
        schedule = AdaptiveSchedule(row["min_gap"], row["max_gap"])
    return RetryPolicy(
        merchant_id=row["merchant_id"],
        max_attempts=row["max_attempts"],
        max_window=row["max_window"],
        schedule=schedule,
        exhausted_action=ExhaustedAction(row["exhausted_action"]),
        reminder_lead=row["reminder_lead"],
    )


class PostgresSession:
    def __init__(self, conn: asyncpg.Connection, outbox: Outbox, metrics: CaseMetrics) -> None:
        self._conn = conn
        self._outbox = outbox
        self._metrics = metrics

    async def _with_attempts(self, rows: Sequence[asyncpg.Record]) -> list[Case]:
        if not rows:
            return []
        attempt_rows = await self._conn.fetch(
            "SELECT * FROM attempts WHERE case_id = ANY($1::uuid[]) ORDER BY case_id, number",
            [r["case_id"] for r in rows],
        )
        by_case: dict[Any, list[Attempt]] = {}
        for a in attempt_rows:
            by_case.setdefault(a["case_id"], []).append(_attempt(a))
        return [_case(r, by_case.get(r["case_id"], [])) for r in rows]

    async def _one(self, where: str, value: str, for_update: bool) -> Case | None:
        lock = " FOR UPDATE" if for_update else ""
        rows = await self._conn.fetch(f"SELECT {CASE_COLUMNS} FROM cases WHERE {where} = $1{lock}", value)
        found = await self._with_attempts(rows)
        return found[0] if found else None

    async def get(self, case_id: str, *, for_update: bool = False) -> Case | None:
        return await self._one("case_id", case_id, for_update)

    async def get_many(self, case_ids: Sequence[str], *, for_update: bool = False) -> dict[str, Case]:
        # Locked in one order, so two batches that share cases wait for each other, never deadlock.
        lock = " ORDER BY case_id FOR UPDATE" if for_update else ""
        rows = await self._conn.fetch(
            f"SELECT {CASE_COLUMNS} FROM cases WHERE case_id = ANY($1::uuid[]){lock}", list(case_ids)
        )
        return {case.case_id: case for case in await self._with_attempts(rows)}

    async def get_by_invoice(self, invoice_id: str, *, for_update: bool = False) -> Case | None:
        return await self._one("invoice_id", invoice_id, for_update)

    async def open_cases_of_subscription(self, subscription_id: str) -> list[Case]:
        rows = await self._conn.fetch(
            f"""SELECT {CASE_COLUMNS} FROM cases WHERE subscription_id = $1 AND ended_at IS NULL
                ORDER BY seq FOR UPDATE""",
            subscription_id,
        )
        return await self._with_attempts(rows)

    async def claim_due(self, now: datetime, limit: int) -> list[Case]:
        rows = await self._conn.fetch(
            f"""SELECT {CASE_COLUMNS} FROM cases
                WHERE due_at <= $1 AND state = ANY($3::text[])
                ORDER BY due_at LIMIT $2 FOR UPDATE SKIP LOCKED""",
            now,
            limit,
            ACTIVE_DUE_STATES,
        )
        return await self._with_attempts(rows)

    async def due_reminders(self, now: datetime, limit: int) -> list[Case]:
        rows = await self._conn.fetch(
            f"""SELECT {CASE_COLUMNS} FROM cases WHERE reminder_at <= $1
                ORDER BY reminder_at LIMIT $2 FOR UPDATE SKIP LOCKED""",
            now,
            limit,
        )
        return await self._with_attempts(rows)

    async def policy(self, merchant_id: str) -> RetryPolicy | None:
        rows = await self._conn.fetch(
            "SELECT * FROM policies WHERE merchant_id = ANY($1::text[]) ORDER BY merchant_id DESC",
            [merchant_id, ""],
        )
        return _policy(rows[0]) if rows else None

    async def stale_fences(self, leases: Sequence[Lease]) -> list[Lease]:
        return await db.stale_fences(self._conn, leases)

    async def outcome_counts(self, since: datetime) -> OutcomeCounts:
        rows = await self._conn.fetch(
            """SELECT decline_code, attempt_ordinal, days_since_first_failure, weekday, hour,
                      count(*) AS attempts, count(*) FILTER (WHERE succeeded) AS successes
               FROM attempt_outcomes WHERE attempted_at >= $1
               GROUP BY decline_code, attempt_ordinal, days_since_first_failure, weekday, hour""",
            since,
        )
        return OutcomeCounts.of(
            (
                AttemptContext(
                    r["decline_code"],
                    r["attempt_ordinal"],
                    r["days_since_first_failure"],
                    r["weekday"],
                    r["hour"],
                ),
                r["attempts"],
                r["successes"],
            )
            for r in rows
        )

    async def trace_contexts(self, case_ids: Sequence[str]) -> dict[str, dict[str, str]]:
        rows = await self._conn.fetch(
            """SELECT c.case_id, coalesce(a.trace_context, c.trace_context) AS trace_context
               FROM cases c LEFT JOIN attempts a
                 ON a.case_id = c.case_id AND a.outcome = 'scheduled' AND a.trace_context <> '{}'::jsonb
               WHERE c.case_id = ANY($1::uuid[])""",
            list(case_ids),
        )
        return {str(r["case_id"]): dict(r["trace_context"] or {}) for r in rows}

    async def insert(self, change: Change) -> bool:
        case = change.case
        invoice = case.invoice
        inserted = await self._conn.fetchval(
            """INSERT INTO cases (case_id, invoice_id, subscription_id, account_id, merchant_id,
                   amount_minor, currency, state, failure_type, decline_kind, decline_code, retryable,
                   first_failed_at, opened_at, due_at, reminder_at, ended_at, version, trace_context)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, 1, $18)
               ON CONFLICT (invoice_id) DO NOTHING RETURNING true""",
            case.case_id,
            invoice.invoice_id,
            invoice.subscription_id,
            invoice.account_id,
            invoice.merchant_id,
            invoice.amount_due.amount_minor,
            invoice.amount_due.currency,
            case.state.value,
            case.failure.type.value,
            case.failure.kind.value,
            case.failure.decline_code,
            case.failure.retryable,
            case.first_failed_at,
            case.opened_at,
            case.due_at,
            case.reminder_at,
            case.ended_at,
            telemetry.capture(),
        )
        if not inserted:
            return False
        await self._write_parts([(change, (), telemetry.capture())])
        return True

    async def apply(self, change: Change) -> Case:
        [case] = await self.apply_all([change])
        return case

    async def apply_all(
        self, changes: Sequence[Change], traces: Sequence[Mapping[str, str]] | None = None
    ) -> list[Case]:
        if not changes:
            return []
        traces = traces if traces is not None else [telemetry.capture()] * len(changes)
        befores = [change.before or change.case for change in changes]
        updated = await self._conn.fetch(
            """UPDATE cases SET state = c.state, failure_type = c.failure_type,
                   decline_kind = c.decline_kind, decline_code = c.decline_code, retryable = c.retryable,
                   due_at = c.due_at, reminder_at = c.reminder_at, ended_at = c.ended_at,
                   version = cases.version + 1
               FROM unnest($1::uuid[], $2::int[], $3::text[], $4::text[], $5::text[], $6::text[],
                           $7::bool[], $8::timestamptz[], $9::timestamptz[], $10::timestamptz[])
                    AS c(case_id, version, state, failure_type, decline_kind, decline_code, retryable,
                         due_at, reminder_at, ended_at)
               WHERE cases.case_id = c.case_id AND cases.version = c.version
               RETURNING cases.case_id""",
            [change.case.case_id for change in changes],
            [before.version for before in befores],
            [change.case.state.value for change in changes],
            [change.case.failure.type.value for change in changes],
            [change.case.failure.kind.value for change in changes],
            [change.case.failure.decline_code for change in changes],
            [change.case.failure.retryable for change in changes],
            [change.case.due_at for change in changes],
            [change.case.reminder_at for change in changes],
            [change.case.ended_at for change in changes],
        )
        if len(updated) != len(changes):
            written = {str(row["case_id"]) for row in updated}
            stale = next(b for c, b in zip(changes, befores, strict=True) if c.case.case_id not in written)
            raise Conflict(f"case {stale.case_id} changed meanwhile (version {stale.version} is stale)")
        await self._write_parts(
            [
                (change, before.attempts, trace)
                for change, before, trace in zip(changes, befores, traces, strict=True)
            ]
        )
        return [
            replace(change.case, version=before.version + 1)
            for change, before in zip(changes, befores, strict=True)
        ]

    async def _write_parts(
        self, parts: Sequence[tuple[Change, Sequence[Attempt], Mapping[str, str]]]
    ) -> None:
        """Attempts, history, events and training rows of many changes: one statement per table.
        Each change's rows carry its own trace (an attempt keeps the trace that first scheduled it)."""
        attempt_rows = [
            (
                change.case.case_id,
                a.number,
                a.scheduled_at,
                a.estimated_success_bp,
                a.sample_size,
                a.reason,
                a.outcome.value,
                a.decline_code,
                a.attempted_at,
                trace,
            )
            for change, attempts_before, trace in parts
            for a in change.case.attempts
            if a not in attempts_before
        ]
        if attempt_rows:
            await self._conn.executemany(
                """INSERT INTO attempts (case_id, number, scheduled_at, estimated_success_bp, sample_size,
                       reason, outcome, decline_code, attempted_at, trace_context)
                   VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
                   ON CONFLICT (case_id, number) DO UPDATE SET scheduled_at = EXCLUDED.scheduled_at,
                       estimated_success_bp = EXCLUDED.estimated_success_bp,
                       sample_size = EXCLUDED.sample_size, reason = EXCLUDED.reason,
                       outcome = EXCLUDED.outcome, decline_code = EXCLUDED.decline_code,
                       attempted_at = EXCLUDED.attempted_at""",
                attempt_rows,
            )
        history_rows = [
            (change.case.case_id, t.from_state.value, t.to_state.value, t.cause, t.detail, t.at)
            for change, _, _ in parts
            for t in change.transitions
        ]
        if history_rows:
            logged = [(change.case.case_id, change.transitions, trace) for change, _, trace in parts]
            db.after_commit(self._conn, lambda: _log_transitions(logged))
            await self._conn.executemany(
                """INSERT INTO case_history (case_id, from_state, to_state, cause, detail, at)
                   VALUES ($1, $2, $3, $4, $5, $6)""",
                history_rows,
            )
        # Events carry the trace they were decided in: changes of one trace go in one statement.
        for trace, grouped in itertools.groupby(
            ((trace, change) for change, _, trace in parts if change.events), key=lambda pair: pair[0]
        ):
            with telemetry.within(trace):
                await self._outbox.add_many(
                    self._conn, [event_message(event) for _, change in grouped for event in change.events]
                )
        outcome_rows = [
            (
                change.case.case_id,
                change.outcome.attempt,
                change.outcome.observation.context.decline_code,
                change.outcome.observation.context.attempt_number,
                change.outcome.observation.context.days_since_first_failure,
                change.outcome.observation.context.weekday,
                change.outcome.observation.context.hour,
                change.outcome.observation.succeeded,
                change.outcome.attempted_at,
            )
            for change, _, _ in parts
            if change.outcome is not None
        ]
        if outcome_rows:
            await self._conn.executemany(
                """INSERT INTO attempt_outcomes (case_id, attempt, decline_code, attempt_ordinal,
                       days_since_first_failure, weekday, hour, succeeded, attempted_at)
                   VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT DO NOTHING""",
                outcome_rows,
            )
        ended = [
            (last.to_state, last.at - change.case.opened_at)
            for change, _, _ in parts
            for last in [t for t in change.transitions if t.to_state in TERMINAL_STATES][-1:]
        ]
        if ended:
            db.after_commit(self._conn, lambda: self._report_ended(ended))

    def _report_ended(self, ended: Sequence[tuple[CaseState, timedelta]]) -> None:
        for state, open_for in ended:
            self._metrics.case_ended(state, open_for)


class PostgresCases:
    def __init__(self, pool: asyncpg.Pool, outbox: Outbox, metrics: CaseMetrics) -> None:
        self._pool = pool
        self._outbox = outbox
        self._metrics = metrics

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[PostgresSession]:
        async with db.transaction(self._pool) as conn:
            yield PostgresSession(conn, self._outbox, self._metrics)

    def within(self, conn: asyncpg.Connection) -> PostgresSession:
        return PostgresSession(conn, self._outbox, self._metrics)

    async def history(self, case_id: str) -> list[Transition]:
        rows = await self._pool.fetch(
            "SELECT from_state, to_state, cause, detail, at FROM case_history WHERE case_id = $1 ORDER BY id",
            case_id,
        )
        return [
            Transition(CaseState(r["from_state"]), CaseState(r["to_state"]), r["cause"], r["at"], r["detail"])
            for r in rows
        ]

    async def list_cases(self, where: CaseFilter, after: int, limit: int) -> list[tuple[int, Case]]:
        async with db.connection(self._pool) as conn:
            rows = await conn.fetch(
                f"""SELECT {CASE_COLUMNS}, seq FROM cases
                    WHERE seq > $1 AND ($2::text IS NULL OR state = $2)
                      AND ($3 = '' OR merchant_id = $3) AND ($4 = '' OR account_id = $4)
                    ORDER BY seq LIMIT $5""",
                after,
                where.state.value if where.state else None,
                where.merchant_id,
                where.account_id,
                limit,
            )
            cases = await PostgresSession(conn, self._outbox, self._metrics)._with_attempts(rows)
        return [(row["seq"], case) for row, case in zip(rows, cases, strict=True)]

    async def get_policy(self, merchant_id: str) -> RetryPolicy | None:
        row = await self._pool.fetchrow("SELECT * FROM policies WHERE merchant_id = $1", merchant_id)
        return _policy(row) if row else None

    async def put_policy(self, policy: RetryPolicy, now: datetime) -> None:
        schedule = policy.schedule
        fixed = isinstance(schedule, FixedSchedule)
        await self._pool.execute(
            """INSERT INTO policies (merchant_id, max_attempts, max_window, schedule_kind, day_offsets,
                   min_gap, max_gap, exhausted_action, reminder_lead, updated_at)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
               ON CONFLICT (merchant_id) DO UPDATE SET max_attempts = EXCLUDED.max_attempts,
                   max_window = EXCLUDED.max_window, schedule_kind = EXCLUDED.schedule_kind,
                   day_offsets = EXCLUDED.day_offsets, min_gap = EXCLUDED.min_gap,
                   max_gap = EXCLUDED.max_gap, exhausted_action = EXCLUDED.exhausted_action,
                   reminder_lead = EXCLUDED.reminder_lead, updated_at = EXCLUDED.updated_at""",
            policy.merchant_id,
            policy.max_attempts,
            policy.max_window,
            "fixed" if fixed else "adaptive",
            list(schedule.day_offsets) if isinstance(schedule, FixedSchedule) else [],
            schedule.min_gap if isinstance(schedule, AdaptiveSchedule) else None,
            schedule.max_gap if isinstance(schedule, AdaptiveSchedule) else None,
            policy.exhausted_action.value,
            policy.reminder_lead,
            now,
        )


def _log_transitions(logged: Sequence[tuple[str, Sequence[Transition], Mapping[str, str]]]) -> None:
    """Log each transition once it is committed, with the trace its change was decided in."""
    for case_id, transitions, trace_context in logged:
        with telemetry.within(trace_context):
            for t in transitions:
                log.info(
                    "case transition",
                    extra={
                        "case_id": case_id,
                        "from_state": t.from_state.value,
                        "to_state": t.to_state.value,
                        "cause": t.cause,
                        "detail": t.detail,
                    },
                )


def due_cases(pool: asyncpg.Pool) -> DueWork:
    """Attempts and reminders due at the suite's test clock and not yet made, for it to wait on."""

    async def due(now: datetime) -> Mapping[str, int]:
        row = await pool.fetchrow(
            """SELECT count(*) FILTER (WHERE due_at <= $1 AND state = ANY($2::text[])) AS attempts,
                      count(*) FILTER (WHERE reminder_at <= $1) AS reminders
               FROM cases""",
            now,
            ACTIVE_DUE_STATES,
        )
        assert row is not None  # an aggregate always has its row
        return {"due dunning attempts": row["attempts"], "due dunning reminders": row["reminders"]}

    return due
