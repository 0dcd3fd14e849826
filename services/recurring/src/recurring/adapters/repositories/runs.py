"""Billing runs and their work items in PostgreSQL."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import date, datetime, timedelta

import asyncpg

from billing_common import telemetry
from billing_common.subscriptions import Frequency, SubscriptionStatus
from recurring.adapters.metrics import run_finished
from recurring.domain.runs import (
    AfterFailure,
    ItemResult,
    ItemStatus,
    Progress,
    Run,
    RunCounts,
    RunItem,
    RunKind,
    RunState,
    WorkItem,
)
from recurring.domain.status import SCHEDULED


def _run(row: asyncpg.Record, counts: RunCounts) -> Run:
    return Run(
        run_id=row["run_id"],
        billing_date=row["billing_date"],
        kind=RunKind(row["kind"]),
        state=RunState(row["state"]),
        dry_run=row["dry_run"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        halted_gateways=tuple(row["halted_gateways"]),
        counts=counts,
        progress=Progress(row["open_seen"], row["progress_at"], row["stalled_at"]),
        working_time=(
            row["worked_until"] - row["worked_from"]
            if row["worked_from"] is not None and row["worked_until"] is not None
            else None
        ),
        trace_context=dict(row["trace_context"] or {}),
    )


class PostgresRuns:
    def __init__(self, conn: asyncpg.Connection) -> None:
        self._conn = conn

    async def add(self, runs: Sequence[Run]) -> None:
        trace_context = telemetry.capture()
        await self._conn.executemany(
            """INSERT INTO runs (run_id, billing_date, kind, state, dry_run, dry_due, dry_skipped, started_at,
                   finished_at, trace_context, worked_until)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10,
                       CASE WHEN $9::timestamptz IS NULL THEN NULL ELSE clock_timestamp() END)
               ON CONFLICT DO NOTHING""",
            [
                (
                    run.run_id,
                    run.billing_date,
                    run.kind.value,
                    run.state.value,
                    run.dry_run,
                    run.counts.due if run.dry_run else 0,
                    run.counts.skipped if run.dry_run else 0,
                    run.started_at,
                    run.finished_at,
                    trace_context,
                )
                for run in runs
            ],
        )

    async def _with_counts(self, rows: Sequence[asyncpg.Record]) -> list[Run]:
        """Runs with their counts: a dry run's as it stored them, a real run's from its items."""
        counts = await self.counts([row["run_id"] for row in rows if not row["dry_run"]])
        return [
            _run(
                row,
                RunCounts(
                    due=row["dry_due"],
                    skipped=row["dry_skipped"],
                    pending=row["dry_due"] - row["dry_skipped"],
                ),
            )
            if row["dry_run"]
            else _run(row, counts.get(row["run_id"], RunCounts()))
            for row in rows
        ]

    async def find(self, billing_date: date, kind: RunKind) -> Run | None:
        row = await self._conn.fetchrow(
            "SELECT * FROM runs WHERE billing_date = $1 AND kind = $2 AND NOT dry_run",
            billing_date,
            kind.value,
        )
        return None if row is None else (await self._with_counts([row]))[0]

    async def load(self, run_ids: Sequence[str], *, lock: bool = False) -> dict[str, Run]:
        rows = await self._conn.fetch(
            "SELECT * FROM runs WHERE run_id = ANY($1::text[]) ORDER BY run_id"
            + (" FOR UPDATE" if lock else ""),
            list(run_ids),
        )
        return {run.run_id: run for run in await self._with_counts(rows)}

    async def page(self, after: int, limit: int) -> list[tuple[int, Run]]:
        rows = await self._conn.fetch(
            "SELECT * FROM runs WHERE ($1 = 0 OR seq < $1) ORDER BY seq DESC LIMIT $2", after, limit
        )
        runs = await self._with_counts(rows)
        return [(int(row["seq"]), run) for row, run in zip(rows, runs, strict=True)]

    async def latest(self, kind: RunKind, not_after: date) -> Run | None:
        row = await self._conn.fetchrow(
            """SELECT * FROM runs WHERE kind = $1 AND NOT dry_run AND billing_date <= $2
               ORDER BY billing_date DESC LIMIT 1""",
            kind.value,
            not_after,
        )
        return None if row is None else (await self._with_counts([row]))[0]

    async def running(self) -> list[Run]:
        rows = await self._conn.fetch(
            "SELECT * FROM runs WHERE state = 'running' AND NOT dry_run ORDER BY billing_date, kind"
        )
        return await self._with_counts(rows)

    async def set_states(self, run_ids: Sequence[str], state: RunState, finished_at: datetime | None) -> None:
        rows = await self._conn.fetch(
            """UPDATE runs SET state = $2, finished_at = $3,
                   worked_until = CASE WHEN $3::timestamptz IS NULL THEN NULL ELSE clock_timestamp() END
               WHERE run_id = ANY($1::text[])
               RETURNING kind, started_at, worked_from, worked_until""",
            list(run_ids),
            state.value,
            finished_at,
        )
        if state is RunState.COMPLETED and finished_at is not None:
            for row in rows:
                # The time the work took, which the test clock does not hold still when it has one.
                took = (
                    row["worked_until"] - row["worked_from"]
                    if row["worked_from"] is not None
                    else finished_at - row["started_at"]
                )
                run_finished(row["kind"], took.total_seconds())

    async def save_progress(self, progress: Mapping[str, Progress]) -> None:
        await self._conn.executemany(
            "UPDATE runs SET open_seen = $2, progress_at = $3, stalled_at = $4 WHERE run_id = $1",
            [(run_id, p.open_items, p.since, p.stalled_at) for run_id, p in progress.items()],
        )

    async def halt(self, run_id: str, gateway: str) -> bool:
        halted = await self._conn.fetchval(
            """UPDATE runs SET halted_gateways = array_append(halted_gateways, $2)
               WHERE run_id = $1 AND NOT $2 = ANY(halted_gateways) RETURNING true""",
            run_id,
            gateway,
        )
        return bool(halted)

    async def resume(self, run_id: str, gateway: str) -> bool:
        resumed = await self._conn.fetchval(
            """UPDATE runs SET halted_gateways = array_remove(halted_gateways, $2)
               WHERE run_id = $1 AND $2 = ANY(halted_gateways) RETURNING true""",
            run_id,
            gateway,
        )
        if resumed:
            await self._conn.execute(
                """UPDATE work_items SET not_before = now()
                   WHERE run_id = $1 AND gateway = $2 AND status = 'deferred'""",
                run_id,
                gateway,
            )
        return bool(resumed)

    async def counts(self, run_ids: Sequence[str]) -> dict[str, RunCounts]:
        if not run_ids:
            return {}
        rows = await self._conn.fetch(
            """SELECT run_id, status, count(*) AS n FROM work_items WHERE run_id = ANY($1::text[])
               GROUP BY run_id, status""",
            list(run_ids),
        )
        by_run: dict[str, dict[str, int]] = {run_id: {} for run_id in run_ids}
        for r in rows:
            by_run[r["run_id"]][r["status"]] = int(r["n"])
        return {run_id: _counts(by_status) for run_id, by_status in by_run.items()}

    async def open_items(self, run_id: str) -> int:
        count = await self._conn.fetchval(
            """SELECT count(*) FROM work_items w JOIN runs r ON r.run_id = w.run_id
               WHERE w.run_id = $1 AND w.status IN ('pending', 'claimed', 'deferred')
                 AND NOT w.gateway = ANY(r.halted_gateways)""",
            run_id,
        )
        return int(count)

    async def deferred_items(self, run_id: str, gateway: str) -> int:
        count = await self._conn.fetchval(
            """SELECT count(*) FROM work_items
               WHERE run_id = $1 AND gateway = $2 AND status IN ('pending', 'claimed', 'deferred')""",
            run_id,
            gateway,
        )
        return int(count)

    async def enqueue_due(self, run_id: str, billing_date: date, frequencies: Sequence[Frequency]) -> int:
        status = await self._conn.execute(
            """INSERT INTO work_items (run_id, subscription_id, due_date, occurrence_key, gateway, status,
                   trace_context)
               SELECT $1, s.subscription_id, s.next_billing_date,
                      s.subscription_id || ':' || s.next_billing_date::text, '', 'pending', $5
               FROM subscriptions s
               WHERE s.frequency = ANY($3::text[]) AND s.next_billing_date <= $2
                 AND s.status = ANY($4::text[])
               ORDER BY s.subscription_id
               ON CONFLICT (occurrence_key) DO NOTHING""",
            run_id,
            billing_date,
            [f.value for f in frequencies],
            [s.value for s in SCHEDULED],
            telemetry.capture(),
        )
        return int(status.split()[-1])

    async def count_due(self, billing_date: date, frequencies: Sequence[Frequency]) -> tuple[int, int]:
        row = await self._conn.fetchrow(
            """SELECT count(*) FILTER (WHERE status = ANY($3::text[])) AS billable,
                      count(*) FILTER (WHERE NOT status = ANY($3::text[])) AS skipped
               FROM subscriptions
               WHERE frequency = ANY($1::text[]) AND next_billing_date <= $2 AND status = ANY($4::text[])""",
            [f.value for f in frequencies],
            billing_date,
            [
                SubscriptionStatus.TRIALING.value,
                SubscriptionStatus.ACTIVE.value,
                SubscriptionStatus.PAST_DUE.value,
            ],
            [s.value for s in SCHEDULED],
        )
        assert row is not None
        return int(row["billable"]), int(row["skipped"])


def _counts(by_status: Mapping[str, int]) -> RunCounts:
    return RunCounts(
        due=sum(by_status.values()),
        charged=by_status.get(ItemStatus.CHARGED.value, 0),
        failed=by_status.get(ItemStatus.FAILED.value, 0),
        skipped=by_status.get(ItemStatus.SKIPPED.value, 0),
        deferred=by_status.get(ItemStatus.DEFERRED.value, 0),
        pending=by_status.get(ItemStatus.PENDING.value, 0) + by_status.get(ItemStatus.CLAIMED.value, 0),
        parked=by_status.get(ItemStatus.PARKED.value, 0),
    )


class PostgresWorkItems:
    def __init__(self, conn: asyncpg.Connection) -> None:
        self._conn = conn

    async def claim(self, limit: int, lease: timedelta, claim_token: str) -> list[WorkItem]:
        """A claim taken over after its lease ran out counts as a failure of the previous try."""
        rows = await self._conn.fetch(
            """WITH picked AS (
                   SELECT w.id, w.status AS was FROM work_items w JOIN runs r ON r.run_id = w.run_id
                   WHERE w.status IN ('pending', 'claimed', 'deferred')
                     AND (w.status = 'pending'
                          OR (w.status = 'claimed' AND w.lease_until < now())
                          OR (w.status = 'deferred' AND w.not_before <= now()))
                     AND NOT w.gateway = ANY(r.halted_gateways)
                   ORDER BY w.id LIMIT $1 FOR UPDATE OF w SKIP LOCKED)
               UPDATE work_items w
               SET status = 'claimed', claim_token = $2, lease_until = now() + $3::interval,
                   failures = w.failures + (picked.was = 'claimed')::int
               FROM picked WHERE w.id = picked.id
               RETURNING w.id, w.run_id, w.subscription_id, w.due_date, w.occurrence_key, w.gateway,
                         w.failures, w.detail, w.trace_context""",
            limit,
            claim_token,
            lease,
        )
        return [
            WorkItem(
                r["id"],
                r["run_id"],
                r["subscription_id"],
                r["due_date"],
                r["occurrence_key"],
                r["gateway"],
                claim_token,
                r["failures"],
                r["detail"],
                dict(r["trace_context"] or {}),
            )
            for r in sorted(rows, key=lambda r: int(r["id"]))
        ]

    async def held(self, items: Sequence[WorkItem]) -> set[int]:
        rows = await self._conn.fetch(
            """SELECT w.id FROM work_items w
               JOIN unnest($1::bigint[], $2::text[]) AS c(id, claim_token)
                 ON c.id = w.id AND c.claim_token = w.claim_token
               WHERE w.status = 'claimed' ORDER BY w.id FOR UPDATE OF w""",
            [item.item_id for item in items],
            [item.claim_token for item in items],
        )
        return {int(r["id"]) for r in rows}

    async def finish(self, results: Sequence[ItemResult]) -> None:
        await self._conn.executemany(
            """UPDATE work_items SET status = $3, detail = $4, invoice_id = coalesce($5, invoice_id),
                   gateway = $6, claim_token = NULL, lease_until = NULL
               WHERE id = $1 AND claim_token = $2""",
            [
                (r.item.item_id, r.item.claim_token, r.status.value, r.detail, r.invoice_id, r.item.gateway)
                for r in results
            ],
        )

    async def defer(self, deferrals: Sequence[tuple[WorkItem, timedelta, str]]) -> None:
        await self._conn.executemany(
            """UPDATE work_items SET status = 'deferred', detail = $3, not_before = now() + $4::interval,
                   gateway = $5, claim_token = NULL, lease_until = NULL
               WHERE id = $1 AND claim_token = $2""",
            [
                (item.item_id, item.claim_token, detail, delay, item.gateway)
                for item, delay, detail in deferrals
            ],
        )

    async def record_failures(self, failures: Sequence[tuple[WorkItem, AfterFailure, str]]) -> list[WorkItem]:
        rows = await self._conn.fetch(
            """UPDATE work_items w SET status = f.status, failures = f.failures, detail = f.detail,
                   not_before = now() + f.retry_in, claim_token = NULL, lease_until = NULL
               FROM unnest($1::bigint[], $2::text[], $3::text[], $4::int[], $5::text[], $6::interval[])
                    AS f(id, claim_token, status, failures, detail, retry_in)
               WHERE w.id = f.id AND w.claim_token = f.claim_token
               RETURNING w.id, w.status""",
            [item.item_id for item, _, _ in failures],
            [item.claim_token for item, _, _ in failures],
            [(ItemStatus.PARKED if after.park else ItemStatus.DEFERRED).value for _, after, _ in failures],
            [after.failures for _, after, _ in failures],
            [detail for _, _, detail in failures],
            [after.retry_in for _, after, _ in failures],
        )
        parked_ids = {int(r["id"]) for r in rows if r["status"] == ItemStatus.PARKED.value}
        return [item for item, _, _ in failures if item.item_id in parked_ids]

    async def page(self, run_id: str, after: int, limit: int) -> list[RunItem]:
        rows = await self._conn.fetch(
            """SELECT id, subscription_id, due_date, gateway, status, detail, invoice_id FROM work_items
               WHERE run_id = $1 AND id > $2 ORDER BY id LIMIT $3""",
            run_id,
            after,
            limit,
        )
        return [
            RunItem(
                r["id"],
                r["subscription_id"],
                r["due_date"],
                r["gateway"],
                ItemStatus(r["status"]),
                r["detail"],
                r["invoice_id"],
            )
            for r in rows
        ]

    async def release(self, claimant: str) -> int:
        status = await self._conn.execute(
            """UPDATE work_items SET status = 'pending', claim_token = NULL, lease_until = NULL
               WHERE status = 'claimed' AND left(claim_token, length($1) + 1) = $1 || '.'""",
            claimant,
        )
        return int(status.split()[-1])

    async def requeue_parked(self, run_id: str, gateway: str) -> int:
        status = await self._conn.execute(
            """UPDATE work_items SET status = 'pending', failures = 0, not_before = NULL
               WHERE run_id = $1 AND gateway = $2 AND status = 'parked'""",
            run_id,
            gateway,
        )
        return int(status.split()[-1])
