"""Subscriptions, runs, work items, invoices, transactions and the ledger in PostgreSQL."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from datetime import date, datetime, timedelta
from typing import Any

import asyncpg
from prometheus_client import Counter

from billing_common import db, idempotency, telemetry
from billing_common.events import Outbox
from billing_common.idempotency import IdempotencyKey
from billing_common.locks import Lease
from billing_common.money import Money
from recurring.adapters.events import EventMessages
from recurring.adapters.metrics import run_finished
from recurring.app.ports import InvoiceFilter, LedgerLine, SubscriptionFilter
from recurring.domain import ledger
from recurring.domain.events import Event
from recurring.domain.invoicing import Invoice, InvoiceLine, LineKind, Transaction
from recurring.domain.ledger import Posting
from recurring.domain.payments import DeclineKind, FailureType, PaymentStatus
from recurring.domain.runs import (
    AfterFailure,
    ItemResult,
    ItemStatus,
    Progress,
    Run,
    RunCounts,
    RunKind,
    RunState,
    WorkItem,
)
from recurring.domain.schedule import Frequency
from recurring.domain.status import SCHEDULED, TERMINAL, InvoiceStatus, SubscriptionStatus
from recurring.domain.subscription import HistoryEntry, MethodType, PaymentMethod, Subscription

ITEMS_PARKED = Counter(
    "recurring_items_parked_total", "Work items parked after failing for a reason of ours", ["gateway"]
)

_SUBSCRIPTION_COLUMNS = (
    "subscription_id, account_id, merchant_id, status, plan_code, plan_version, amount_minor, currency, "
    "frequency, start_date, anchor_day, method_type, gateway_token, trial_days, trial_end, "
    "current_period_start, current_period_end, next_billing_date, tier_mapped, cancel_at_period_end, "
    "version, created_at, updated_at"
)


def _subscription(row: asyncpg.Record) -> Subscription:
    return Subscription(
        subscription_id=row["subscription_id"],
        account_id=row["account_id"],
        merchant_id=row["merchant_id"],
        status=SubscriptionStatus(row["status"]),
        plan_code=row["plan_code"],
        plan_version=row["plan_version"],
        amount=Money(row["amount_minor"], row["currency"]),
        frequency=Frequency(row["frequency"]),
        start_date=row["start_date"],
        anchor_day=row["anchor_day"],
        payment_method=PaymentMethod(MethodType(row["method_type"]), row["gateway_token"]),
        trial_days=row["trial_days"],
        trial_end=row["trial_end"],
        current_period_start=row["current_period_start"],
        current_period_end=row["current_period_end"],
        next_billing_date=row["next_billing_date"],
        tier_mapped=row["tier_mapped"],
        cancel_at_period_end=row["cancel_at_period_end"],
        version=row["version"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


def _subscription_values(sub: Subscription) -> tuple[Any, ...]:
    return (
        sub.subscription_id,
        sub.account_id,
        sub.merchant_id,
        sub.status.value,
        sub.plan_code,
        sub.plan_version,
        sub.amount.amount_minor,
        sub.amount.currency,
        sub.frequency.value,
        sub.start_date,
        sub.anchor_day,
        sub.payment_method.type.value,
        sub.payment_method.token,
        sub.trial_days,
        sub.trial_end,
        sub.current_period_start,
        sub.current_period_end,
        sub.next_billing_date,
        sub.tier_mapped,
        sub.cancel_at_period_end,
        sub.version,
        sub.created_at,
        sub.updated_at,
    )


def _invoice(row: asyncpg.Record, lines: Sequence[asyncpg.Record] = ()) -> Invoice:
    currency = row["currency"]
    return Invoice(
        invoice_id=row["invoice_id"],
        subscription_id=row["subscription_id"],
        account_id=row["account_id"],
        merchant_id=row["merchant_id"],
        occurrence_key=row["occurrence_key"],
        status=InvoiceStatus(row["status"]),
        billing_date=row["billing_date"],
        period_start=row["period_start"],
        period_end=row["period_end"],
        total=Money(row["total_minor"], currency),
        credit_applied=Money(row["credit_applied"], currency),
        amount_due=Money(row["amount_due"], currency),
        created_at=row["created_at"],
        paid_at=row["paid_at"],
        refunded_minor=row["refunded_minor"],
        lines=tuple(
            InvoiceLine(
                LineKind(line["kind"]),
                line["description"],
                Money(line["amount_minor"], currency),
                line["quantity"],
                line["unit_price"],
            )
            for line in lines
        ),
    )


def _transaction(row: asyncpg.Record) -> Transaction:
    return Transaction(
        transaction_id=row["transaction_id"],
        invoice_id=row["invoice_id"],
        attempt=row["attempt"],
        idempotency_key=row["idempotency_key"],
        retry_key=row["retry_key"],
        amount=Money(row["amount_minor"], row["currency"]),
        created_at=row["created_at"],
        status=PaymentStatus(row["status"]),
        payment_id=row["payment_id"],
        gateway=row["gateway"],
        failure_type=FailureType(row["failure_type"]),
        decline_kind=DeclineKind(row["decline_kind"]),
        decline_code=row["decline_code"],
        retryable=row["retryable"],
        trace_context=dict(row["trace_context"] or {}),
    )


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
    )


class PostgresTx:
    """Every read and write of one use case, on one connection inside one transaction."""

    def __init__(self, conn: asyncpg.Connection, outbox: Outbox, messages: EventMessages) -> None:
        self._conn = conn
        self._outbox = outbox
        self._messages = messages

    # ------------------------------------------------------------ plumbing

    async def claim_key(self, idem: IdempotencyKey) -> str | None:
        return await idempotency.claim(self._conn, idem)

    async def complete_key(self, idem: IdempotencyKey, answer: str) -> None:
        await idempotency.complete(self._conn, idem, answer)

    async def check_fence(self, lease: Lease) -> None:
        await db.check_fence(self._conn, lease)

    async def emit(self, event: Event) -> None:
        await self._outbox.add(self._conn, self._messages.message(event))

    async def emit_all(self, events: Sequence[Event], traces: Sequence[Mapping[str, str]] = ()) -> None:
        """`traces`: the stored trace each event is written under ({} or none: the current one)."""
        if not traces:
            await self._outbox.add_many(self._conn, [self._messages.message(event) for event in events])
            return
        groups: dict[tuple[tuple[str, str], ...], list[Event]] = {}
        for event, trace in zip(events, traces, strict=True):
            groups.setdefault(tuple(sorted(trace.items())), []).append(event)
        for trace_items, grouped in groups.items():
            with telemetry.within(dict(trace_items)):
                await self._outbox.add_many(self._conn, [self._messages.message(event) for event in grouped])

    # ------------------------------------------------------------ subscriptions

    async def insert_subscription(self, sub: Subscription) -> None:
        placeholders = ", ".join(f"${i}" for i in range(1, 24))
        await self._conn.execute(
            f"INSERT INTO subscriptions ({_SUBSCRIPTION_COLUMNS}) VALUES ({placeholders})",
            *_subscription_values(sub),
        )

    async def load_subscription(self, subscription_id: str, *, lock: bool = False) -> Subscription | None:
        row = await self._conn.fetchrow(
            f"SELECT {_SUBSCRIPTION_COLUMNS} FROM subscriptions WHERE subscription_id = $1"
            + (" FOR UPDATE" if lock else ""),
            subscription_id,
        )
        return None if row is None else _subscription(row)

    async def load_subscriptions(
        self, subscription_ids: Sequence[str], *, lock: bool = False
    ) -> dict[str, Subscription]:
        rows = await self._conn.fetch(
            f"""SELECT {_SUBSCRIPTION_COLUMNS} FROM subscriptions WHERE subscription_id = ANY($1::text[])
                ORDER BY subscription_id"""
            + (" FOR UPDATE" if lock else ""),
            list(subscription_ids),
        )
        return {r["subscription_id"]: _subscription(r) for r in rows}

    async def save_subscription(self, sub: Subscription) -> None:
        await self.save_subscriptions([sub])

    async def save_subscriptions(self, subs: Sequence[Subscription]) -> None:
        names = _SUBSCRIPTION_COLUMNS.split(", ")
        assignments = ", ".join(f"{name} = ${i}" for i, name in enumerate(names, start=1) if i > 1)
        await self._conn.executemany(
            f"UPDATE subscriptions SET {assignments} WHERE subscription_id = $1",
            [_subscription_values(sub) for sub in subs],
        )

    async def list_subscriptions(
        self, where: SubscriptionFilter, after: str, limit: int
    ) -> list[Subscription]:
        rows = await self._conn.fetch(
            f"""SELECT {_SUBSCRIPTION_COLUMNS} FROM subscriptions
                WHERE ($1 = '' OR account_id = $1) AND ($2::text IS NULL OR status = $2)
                  AND ($3::text IS NULL OR frequency = $3) AND subscription_id > $4
                ORDER BY subscription_id LIMIT $5""",
            where.account_id,
            where.status.value if where.status else None,
            where.frequency.value if where.frequency else None,
            after,
            limit,
        )
        return [_subscription(r) for r in rows]

    async def tier_mapped_subscriptions(self, account_id: str) -> list[str]:
        rows = await self._conn.fetch(
            """SELECT subscription_id FROM subscriptions
               WHERE account_id = $1 AND tier_mapped AND NOT status = ANY($2::text[])
               ORDER BY subscription_id""",
            account_id,
            [s.value for s in TERMINAL],
        )
        return [r["subscription_id"] for r in rows]

    async def add_history(self, entry: HistoryEntry) -> None:
        await self.add_histories([entry])

    async def add_histories(self, entries: Sequence[HistoryEntry]) -> None:
        await self._conn.executemany(
            """INSERT INTO subscription_history
                   (subscription_id, changes, actor, cause_event_id, reason, changed_at)
               VALUES ($1, $2, $3, $4, $5, $6)""",
            [
                (e.subscription_id, e.changes, e.actor, e.cause_event_id, e.reason, e.changed_at)
                for e in entries
            ],
        )

    async def history(self, subscription_id: str) -> list[HistoryEntry]:
        rows = await self._conn.fetch(
            "SELECT * FROM subscription_history WHERE subscription_id = $1 ORDER BY id", subscription_id
        )
        return [
            HistoryEntry(
                r["subscription_id"],
                r["changes"],
                r["actor"],
                r["cause_event_id"],
                r["reason"],
                r["changed_at"],
            )
            for r in rows
        ]

    async def add_proration(self, subscription_id: str, description: str, amount: Money) -> None:
        await self._conn.execute(
            """INSERT INTO pending_prorations (subscription_id, description, amount_minor, currency)
               VALUES ($1, $2, $3, $4)""",
            subscription_id,
            description,
            amount.amount_minor,
            amount.currency,
        )

    async def prorations_of(self, subscription_ids: Sequence[str]) -> dict[str, list[tuple[int, str, Money]]]:
        rows = await self._conn.fetch(
            """SELECT id, subscription_id, description, amount_minor, currency FROM pending_prorations
               WHERE subscription_id = ANY($1::text[]) AND invoice_id IS NULL ORDER BY id""",
            list(subscription_ids),
        )
        found: dict[str, list[tuple[int, str, Money]]] = {}
        for r in rows:
            found.setdefault(r["subscription_id"], []).append(
                (r["id"], r["description"], Money(r["amount_minor"], r["currency"]))
            )
        return found

    async def attach_prorations_to(self, ids_by_invoice: Mapping[str, Sequence[int]]) -> None:
        rows = [(list(ids), invoice_id) for invoice_id, ids in ids_by_invoice.items() if ids]
        if rows:
            await self._conn.executemany(
                "UPDATE pending_prorations SET invoice_id = $2 WHERE id = ANY($1::bigint[])", rows
            )

    # ------------------------------------------------------------ runs and work items

    async def insert_run(self, run: Run) -> bool:
        inserted = await self._conn.fetchval(
            """INSERT INTO runs (run_id, billing_date, kind, state, dry_run, dry_due, dry_skipped, started_at,
                   finished_at, trace_context)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) ON CONFLICT DO NOTHING RETURNING true""",
            run.run_id,
            run.billing_date,
            run.kind.value,
            run.state.value,
            run.dry_run,
            run.counts.due if run.dry_run else 0,
            run.counts.skipped if run.dry_run else 0,
            run.started_at,
            run.finished_at,
            telemetry.capture(),
        )
        return bool(inserted)

    async def _with_counts(self, row: asyncpg.Record | None) -> Run | None:
        if row is None:
            return None
        if row["dry_run"]:
            due, skipped = row["dry_due"], row["dry_skipped"]
            return _run(row, RunCounts(due=due, skipped=skipped, pending=due - skipped))
        return _run(row, await self.run_counts(row["run_id"]))

    async def find_run(self, billing_date: date, kind: RunKind) -> Run | None:
        row = await self._conn.fetchrow(
            "SELECT * FROM runs WHERE billing_date = $1 AND kind = $2 AND NOT dry_run",
            billing_date,
            kind.value,
        )
        return await self._with_counts(row)

    async def get_run(self, run_id: str, *, lock: bool = False) -> Run | None:
        row = await self._conn.fetchrow(
            "SELECT * FROM runs WHERE run_id = $1" + (" FOR UPDATE" if lock else ""), run_id
        )
        return await self._with_counts(row)

    async def list_runs(self, after: int, limit: int) -> list[tuple[int, Run]]:
        rows = await self._conn.fetch(
            "SELECT * FROM runs WHERE ($1 = 0 OR seq < $1) ORDER BY seq DESC LIMIT $2", after, limit
        )
        found = []
        for row in rows:
            run = await self._with_counts(row)
            assert run is not None
            found.append((int(row["seq"]), run))
        return found

    async def latest_run(self, kind: RunKind, not_after: date) -> Run | None:
        row = await self._conn.fetchrow(
            """SELECT * FROM runs WHERE kind = $1 AND NOT dry_run AND billing_date <= $2
               ORDER BY billing_date DESC LIMIT 1""",
            kind.value,
            not_after,
        )
        return await self._with_counts(row)

    async def set_run_state(self, run_id: str, state: RunState, finished_at: datetime | None) -> None:
        row = await self._conn.fetchrow(
            "UPDATE runs SET state = $2, finished_at = $3 WHERE run_id = $1 RETURNING kind, started_at",
            run_id,
            state.value,
            finished_at,
        )
        if row is not None and state is RunState.COMPLETED and finished_at is not None:
            run_finished(row["kind"], (finished_at - row["started_at"]).total_seconds())

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

    async def claim_items(self, limit: int, lease: timedelta, claim_token: str) -> list[WorkItem]:
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

    async def held_items(self, items: Sequence[WorkItem]) -> set[int]:
        rows = await self._conn.fetch(
            """SELECT w.id FROM work_items w
               JOIN unnest($1::bigint[], $2::text[]) AS c(id, claim_token)
                 ON c.id = w.id AND c.claim_token = w.claim_token
               WHERE w.status = 'claimed' ORDER BY w.id FOR UPDATE OF w""",
            [item.item_id for item in items],
            [item.claim_token for item in items],
        )
        return {int(r["id"]) for r in rows}

    async def finish_items(self, results: Sequence[ItemResult]) -> None:
        await self._conn.executemany(
            """UPDATE work_items SET status = $3, detail = $4, invoice_id = coalesce($5, invoice_id),
                   gateway = $6, claim_token = NULL, lease_until = NULL
               WHERE id = $1 AND claim_token = $2""",
            [
                (r.item.item_id, r.item.claim_token, r.status.value, r.detail, r.invoice_id, r.item.gateway)
                for r in results
            ],
        )

    async def defer_items(self, deferrals: Sequence[tuple[WorkItem, timedelta, str]]) -> None:
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
        parked = [item for item, _, _ in failures if item.item_id in parked_ids]
        for item in parked:
            ITEMS_PARKED.labels(item.gateway).inc()
        return parked

    async def release_claims(self, claimant: str) -> int:
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

    async def running_runs(self) -> list[Run]:
        rows = await self._conn.fetch(
            """SELECT * FROM runs WHERE state = 'running' AND NOT dry_run
               ORDER BY billing_date, kind"""
        )
        found = []
        for row in rows:
            run = await self._with_counts(row)
            assert run is not None
            found.append(run)
        return found

    async def save_progress(self, run_id: str, progress: Progress) -> None:
        await self._conn.execute(
            "UPDATE runs SET open_seen = $2, progress_at = $3, stalled_at = $4 WHERE run_id = $1",
            run_id,
            progress.open_items,
            progress.since,
            progress.stalled_at,
        )

    async def halt_gateway(self, run_id: str, gateway: str) -> bool:
        halted = await self._conn.fetchval(
            """UPDATE runs SET halted_gateways = array_append(halted_gateways, $2)
               WHERE run_id = $1 AND NOT $2 = ANY(halted_gateways) RETURNING true""",
            run_id,
            gateway,
        )
        return bool(halted)

    async def resume_gateway(self, run_id: str, gateway: str) -> bool:
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

    async def deferred_items(self, run_id: str, gateway: str) -> int:
        count = await self._conn.fetchval(
            """SELECT count(*) FROM work_items
               WHERE run_id = $1 AND gateway = $2 AND status IN ('pending', 'claimed', 'deferred')""",
            run_id,
            gateway,
        )
        return int(count)

    async def run_counts(self, run_id: str) -> RunCounts:
        rows = await self._conn.fetch(
            "SELECT status, count(*) AS n FROM work_items WHERE run_id = $1 GROUP BY status", run_id
        )
        by_status = {r["status"]: int(r["n"]) for r in rows}
        return RunCounts(
            due=sum(by_status.values()),
            charged=by_status.get(ItemStatus.CHARGED.value, 0),
            failed=by_status.get(ItemStatus.FAILED.value, 0),
            skipped=by_status.get(ItemStatus.SKIPPED.value, 0),
            deferred=by_status.get(ItemStatus.DEFERRED.value, 0),
            pending=by_status.get(ItemStatus.PENDING.value, 0) + by_status.get(ItemStatus.CLAIMED.value, 0),
            parked=by_status.get(ItemStatus.PARKED.value, 0),
        )

    async def open_items(self, run_id: str) -> int:
        count = await self._conn.fetchval(
            """SELECT count(*) FROM work_items w JOIN runs r ON r.run_id = w.run_id
               WHERE w.run_id = $1 AND w.status IN ('pending', 'claimed', 'deferred')
                 AND NOT w.gateway = ANY(r.halted_gateways)""",
            run_id,
        )
        return int(count)

    # ------------------------------------------------------------ invoices and transactions

    async def invoices_for_occurrences(self, occurrence_keys: Sequence[str]) -> dict[str, Invoice]:
        rows = await self._conn.fetch(
            "SELECT * FROM invoices WHERE occurrence_key = ANY($1::text[])", list(occurrence_keys)
        )
        return {r["occurrence_key"]: _invoice(r) for r in rows}

    async def insert_invoices(self, invoices: Sequence[Invoice]) -> None:
        await self._conn.executemany(
            """INSERT INTO invoices (invoice_id, subscription_id, account_id, merchant_id, occurrence_key,
                   status,
                   billing_date, period_start, period_end, total_minor, credit_applied, amount_due, currency,
                   created_at, paid_at)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)""",
            [
                (
                    invoice.invoice_id,
                    invoice.subscription_id,
                    invoice.account_id,
                    invoice.merchant_id,
                    invoice.occurrence_key,
                    invoice.status.value,
                    invoice.billing_date,
                    invoice.period_start,
                    invoice.period_end,
                    invoice.total.amount_minor,
                    invoice.credit_applied.amount_minor,
                    invoice.amount_due.amount_minor,
                    invoice.total.currency,
                    invoice.created_at,
                    invoice.paid_at,
                )
                for invoice in invoices
            ],
        )
        await self._conn.executemany(
            """INSERT INTO invoice_lines
                   (invoice_id, position, kind, description, quantity, unit_price, amount_minor)
               VALUES ($1, $2, $3, $4, $5, $6, $7)""",
            [
                (
                    invoice.invoice_id,
                    i,
                    line.kind.value,
                    line.description,
                    line.quantity,
                    line.unit_price,
                    line.amount.amount_minor,
                )
                for invoice in invoices
                for i, line in enumerate(invoice.lines)
            ],
        )

    async def load_invoice(self, invoice_id: str, *, lock: bool = False) -> Invoice | None:
        row = await self._conn.fetchrow(
            "SELECT * FROM invoices WHERE invoice_id = $1" + (" FOR UPDATE" if lock else ""), invoice_id
        )
        if row is None:
            return None
        lines = await self._conn.fetch(
            "SELECT * FROM invoice_lines WHERE invoice_id = $1 ORDER BY position", invoice_id
        )
        return _invoice(row, lines)

    async def load_invoices(self, invoice_ids: Sequence[str]) -> dict[str, Invoice]:
        rows = await self._conn.fetch(
            "SELECT * FROM invoices WHERE invoice_id = ANY($1::text[]) ORDER BY invoice_id FOR UPDATE",
            list(invoice_ids),
        )
        lines = await self._conn.fetch(
            "SELECT * FROM invoice_lines WHERE invoice_id = ANY($1::text[]) ORDER BY invoice_id, position",
            list(invoice_ids),
        )
        lines_of: dict[str, list[asyncpg.Record]] = {}
        for line in lines:
            lines_of.setdefault(line["invoice_id"], []).append(line)
        return {r["invoice_id"]: _invoice(r, lines_of.get(r["invoice_id"], ())) for r in rows}

    async def set_invoice_statuses(
        self, invoice_ids: Sequence[str], status: InvoiceStatus, paid_at: datetime | None = None
    ) -> None:
        await self._conn.execute(
            """UPDATE invoices SET status = $2, paid_at = coalesce($3, paid_at)
               WHERE invoice_id = ANY($1::text[])""",
            list(invoice_ids),
            status.value,
            paid_at,
        )

    async def set_invoice_refunds(self, refunded: Mapping[str, int]) -> None:
        await self._conn.execute(
            """UPDATE invoices i SET refunded_minor = r.refunded
               FROM unnest($1::text[], $2::bigint[]) AS r(invoice_id, refunded)
               WHERE i.invoice_id = r.invoice_id""",
            list(refunded),
            list(refunded.values()),
        )

    async def list_invoices(self, where: InvoiceFilter, after: int, limit: int) -> list[tuple[int, Invoice]]:
        rows = await self._conn.fetch(
            """SELECT * FROM invoices
               WHERE ($1 = '' OR subscription_id = $1) AND ($2 = '' OR account_id = $2)
                 AND ($3::text IS NULL OR status = $3) AND seq > $4
               ORDER BY seq LIMIT $5""",
            where.subscription_id,
            where.account_id,
            where.status.value if where.status else None,
            after,
            limit,
        )
        found = []
        for row in rows:
            lines = await self._conn.fetch(
                "SELECT * FROM invoice_lines WHERE invoice_id = $1 ORDER BY position", row["invoice_id"]
            )
            found.append((int(row["seq"]), _invoice(row, lines)))
        return found

    async def unpaid_invoices_of(self, subscription_ids: Sequence[str]) -> dict[str, int]:
        rows = await self._conn.fetch(
            """SELECT subscription_id, count(*) AS unpaid FROM invoices
               WHERE subscription_id = ANY($1::text[]) AND status IN ('open', 'payment_failed')
               GROUP BY subscription_id""",
            list(subscription_ids),
        )
        return {r["subscription_id"]: int(r["unpaid"]) for r in rows}

    async def insert_transactions(self, txns: Sequence[Transaction]) -> None:
        trace_context = telemetry.capture()
        await self._conn.executemany(
            """INSERT INTO transactions (transaction_id, invoice_id, attempt, idempotency_key, retry_key,
                   status,
                   amount_minor, currency, created_at, trace_context)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)""",
            [
                (
                    txn.transaction_id,
                    txn.invoice_id,
                    txn.attempt,
                    txn.idempotency_key,
                    txn.retry_key,
                    txn.status.value,
                    txn.amount.amount_minor,
                    txn.amount.currency,
                    txn.created_at,
                    txn.trace_context or trace_context,
                )
                for txn in txns
            ],
        )

    async def save_transactions(self, txns: Sequence[Transaction]) -> None:
        await self._conn.executemany(
            """UPDATE transactions SET status = $2, payment_id = $3, gateway = $4, failure_type = $5,
                   decline_kind = $6, decline_code = $7, retryable = $8
               WHERE transaction_id = $1""",
            [
                (
                    txn.transaction_id,
                    txn.status.value,
                    txn.payment_id,
                    txn.gateway,
                    txn.failure_type.value,
                    txn.decline_kind.value,
                    txn.decline_code,
                    txn.retryable,
                )
                for txn in txns
            ],
        )

    async def transactions(self, invoice_id: str) -> list[Transaction]:
        return (await self.transactions_of([invoice_id])).get(invoice_id, [])

    async def transactions_of(self, invoice_ids: Sequence[str]) -> dict[str, list[Transaction]]:
        rows = await self._conn.fetch(
            "SELECT * FROM transactions WHERE invoice_id = ANY($1::text[]) ORDER BY invoice_id, attempt",
            list(invoice_ids),
        )
        found: dict[str, list[Transaction]] = {}
        for r in rows:
            found.setdefault(r["invoice_id"], []).append(_transaction(r))
        return found

    async def transaction_by_retry_key(self, retry_key: str) -> Transaction | None:
        row = await self._conn.fetchrow("SELECT * FROM transactions WHERE retry_key = $1", retry_key)
        return None if row is None else _transaction(row)

    async def transaction_for_payment(self, payment_id: str, idempotency_key: str) -> Transaction | None:
        row = await self._conn.fetchrow(
            """SELECT * FROM transactions WHERE idempotency_key = $2 OR ($1 <> '' AND payment_id = $1)
               ORDER BY (idempotency_key = $2) DESC LIMIT 1""",
            payment_id,
            idempotency_key,
        )
        return None if row is None else _transaction(row)

    # ------------------------------------------------------------ the ledger

    async def post(self, posting: Posting, at: datetime) -> None:
        await self.post_all([posting], at)

    async def post_all(self, postings: Sequence[Posting], at: datetime) -> None:
        """Each posting is one ledger transaction; all of them go in one statement."""
        rows = [
            (ltx, p.customer, e.account, e.amount.amount_minor, e.amount.currency, p.kind.value, p.reference)
            for p, ltx in ((p, f"ltx_{uuid.uuid4().hex}") for p in postings)
            for e in p.entries
        ]
        if not rows:
            return
        await self._conn.execute(
            """INSERT INTO ledger_entries (ledger_transaction_id, customer, account, amount_minor, currency,
                   kind, reference, created_at)
               SELECT e.ltx, e.customer, e.account, e.amount, e.currency, e.kind, e.reference, $8
               FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::text[], $6::text[],
                           $7::text[]) AS e(ltx, customer, account, amount, currency, kind, reference)""",
            *(list(column) for column in zip(*rows, strict=True)),
            at,
        )

    async def credits(self, customers: Sequence[tuple[str, str]]) -> dict[tuple[str, str], Money]:
        """Credit available to each (customer, currency)."""
        rows = await self._conn.fetch(
            """SELECT c.customer, c.currency, coalesce(-sum(l.amount_minor), 0) AS credit
               FROM unnest($1::text[], $2::text[], $3::text[]) AS c(customer, currency, account)
               LEFT JOIN ledger_entries l
                 ON l.customer = c.customer AND l.currency = c.currency AND l.account = c.account
               GROUP BY c.customer, c.currency""",
            [c for c, _ in customers],
            [cur for _, cur in customers],
            [ledger.customer_credit(c) for c, _ in customers],
        )
        return {(r["customer"], r["currency"]): Money(int(r["credit"]), r["currency"]) for r in rows}

    async def balances(self, customer: str, currency: str) -> tuple[Money, Money]:
        row = await self._conn.fetchrow(
            """SELECT coalesce(sum(amount_minor), 0) AS balance,
                      coalesce(sum(amount_minor) FILTER (WHERE account = $3), 0) AS credit
               FROM ledger_entries WHERE customer = $1 AND currency = $4 AND account IN ($2, $3)""",
            customer,
            ledger.receivable(customer),
            ledger.customer_credit(customer),
            currency,
        )
        assert row is not None
        return Money(int(row["balance"]), currency), Money(-int(row["credit"]), currency)

    async def ledger_lines(self, customer: str, after: int, limit: int) -> list[LedgerLine]:
        rows = await self._conn.fetch(
            """SELECT * FROM ledger_entries WHERE customer = $1 AND entry_id > $2
               ORDER BY entry_id LIMIT $3""",
            customer,
            after,
            limit,
        )
        return [
            LedgerLine(
                r["entry_id"],
                r["ledger_transaction_id"],
                r["account"],
                Money(r["amount_minor"], r["currency"]),
                r["kind"],
                r["reference"],
                r["created_at"],
            )
            for r in rows
        ]

    async def unbalanced_ledger_transactions(self) -> list[str]:
        rows = await self._conn.fetch(
            """SELECT ledger_transaction_id FROM ledger_entries
               GROUP BY ledger_transaction_id HAVING sum(amount_minor) <> 0 OR count(DISTINCT currency) > 1"""
        )
        return [r["ledger_transaction_id"] for r in rows]


class PostgresStore:
    def __init__(self, pool: asyncpg.Pool, outbox: Outbox, messages: EventMessages) -> None:
        self._pool = pool
        self._outbox = outbox
        self._messages = messages

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[PostgresTx]:
        async with db.transaction(self._pool) as conn:
            yield PostgresTx(conn, self._outbox, self._messages)

    def within(self, conn: asyncpg.Connection) -> PostgresTx:
        return PostgresTx(conn, self._outbox, self._messages)
