"""Prometheus metrics of billing runs. The gauges are read from the database, so every pod reports
the same figures (aggregate them with `max`, not `sum`); KEDA scales the workers on the backlog."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping
from datetime import datetime, time, timedelta
from zoneinfo import ZoneInfo

import asyncpg
from prometheus_client import Counter, Gauge, Histogram

from billing_common.suite_clock import DueWork
from recurring.domain.runs import RunKind, WorkItem, latest_scheduled_date

log = logging.getLogger(__name__)

REFRESH = timedelta(seconds=15)

WORK_BACKLOG = Gauge(
    "recurring_work_backlog_items",
    "Work items of every run that are due and not done yet (pending, claimed, or deferred and due again), "
    "leaving out those of halted gateways",
)
RUN_ITEMS = Gauge(
    "recurring_run_items",
    "Work items of each unfinished run, by status",
    ["kind", "billing_date", "status"],
)
RUN_DUE = Gauge(
    "recurring_run_due_items",
    "Work items each unfinished run holds, whatever their status",
    ["kind", "billing_date"],
)
RUN_HALTED_GATEWAYS = Gauge(
    "recurring_run_halted_gateways",
    "Gateways halted in each unfinished run (its part waits for ResumeRun)",
    ["kind", "billing_date"],
)
RUN_AGE = Gauge(
    "recurring_run_age_seconds", "Time since each unfinished run started", ["kind", "billing_date"]
)
CHARGES = Counter(
    "recurring_charges_total", "Charges sent to gateway-adapter, by gateway and status", ["gateway", "status"]
)
ITEMS_PARKED = Counter(
    "recurring_items_parked_total", "Work items parked after failing for a reason of ours", ["gateway"]
)
RUNS_STALLED = Gauge(
    "recurring_runs_stalled",
    "Running runs whose open items have not moved for RECURRING_RUN_STALLED_AFTER",
    ["kind"],
)
RUN_SECONDS = Histogram(
    "recurring_run_duration_seconds",
    "From a run's start to its completion",
    ["kind"],
    buckets=(60, 300, 600, 1200, 1800, 3600, 7200, 14400, 28800, 86400),
)
# Work items due and not done yet: pending, claimed, or deferred and due again. The items of halted
# gateways wait for ResumeRun and are left out.
BACKLOG = """SELECT count(*) FROM work_items w JOIN runs r ON r.run_id = w.run_id
             WHERE (w.status IN ('pending', 'claimed')
                    OR (w.status = 'deferred' AND w.not_before <= now()))
               AND NOT w.gateway = ANY(r.halted_gateways)"""
# Reported for every unfinished run, even at 0, so a dashboard shows the run's whole picture.
STATUSES = ("pending", "claimed", "deferred", "charged", "failed", "skipped")


def run_finished(kind: str, seconds: float) -> None:
    RUN_SECONDS.labels(kind).observe(max(seconds, 0.0))


class PrometheusRecurringMetrics:
    """The `RecurringMetrics` charging and the runs report to; a parked item is also a log line, with
    the reason an operator needs before resuming it."""

    def charge_answered(self, gateway: str, status: str) -> None:
        CHARGES.labels(gateway, status).inc()

    def item_parked(self, item: WorkItem, reason: str) -> None:
        ITEMS_PARKED.labels(item.gateway).inc()
        log.warning(
            "work item parked",
            extra={
                "item": item.item_id,
                "run": item.run_id,
                "occurrence": item.occurrence_key,
                "reason": reason,
            },
        )

    def runs_stalled(self, kind: RunKind, count: int) -> None:
        RUNS_STALLED.labels(kind.value).set(count)


class RunMetrics:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        self._runs: set[tuple[str, str]] = set()
        self._items: set[tuple[str, str, str]] = set()

    async def refresh(self) -> None:
        async with self._pool.acquire() as conn:
            backlog = await conn.fetchval(BACKLOG)
            runs = await conn.fetch(
                """SELECT run_id, kind, billing_date::text AS billing_date,
                          cardinality(halted_gateways) AS halted,
                          extract(epoch FROM now() - started_at) AS age
                   FROM runs WHERE state IN ('running', 'halted') AND NOT dry_run"""
            )
            items = await conn.fetch(
                """SELECT run_id, status, count(*) AS n FROM work_items
                   WHERE run_id = ANY($1::text[]) GROUP BY run_id, status""",
                [r["run_id"] for r in runs],
            )
        WORK_BACKLOG.set(backlog)
        counts: dict[str, dict[str, int]] = {}
        for row in items:
            counts.setdefault(row["run_id"], {})[row["status"]] = row["n"]
        runs_now: set[tuple[str, str]] = set()
        items_now: set[tuple[str, str, str]] = set()
        for run in runs:
            labels = (run["kind"], run["billing_date"])
            runs_now.add(labels)
            by_status = counts.get(run["run_id"], {})
            for status in {*STATUSES, *by_status}:
                items_now.add((*labels, status))
                RUN_ITEMS.labels(*labels, status).set(by_status.get(status, 0))
            RUN_DUE.labels(*labels).set(sum(by_status.values()))
            RUN_HALTED_GATEWAYS.labels(*labels).set(run["halted"])
            RUN_AGE.labels(*labels).set(max(float(run["age"]), 0.0))
        # A finished run leaves the gauges.
        for item_labels in self._items - items_now:
            _remove(RUN_ITEMS, *item_labels)
        for labels in self._runs - runs_now:
            _remove(RUN_DUE, *labels)
            _remove(RUN_HALTED_GATEWAYS, *labels)
            _remove(RUN_AGE, *labels)
        self._runs, self._items = runs_now, items_now


def run_work(pool: asyncpg.Pool, times: Mapping[RunKind, time], zone: ZoneInfo) -> DueWork:
    """For the suite's test clock to wait on: the kinds whose latest scheduled date has come
    without a run yet (the scheduler is about to create it), and the runs' open items."""

    async def due(now: datetime) -> Mapping[str, int]:
        async with pool.acquire() as conn:
            unstarted = 0
            for kind, at in times.items():
                latest = await conn.fetchval(
                    "SELECT max(billing_date) FROM runs WHERE kind = $1 AND NOT dry_run", kind.value
                )
                if latest is None or latest < latest_scheduled_date(now, at, zone):
                    unstarted += 1
            items = await conn.fetchval(BACKLOG)
        return {"runs not started": unstarted, "open run items": int(items)}

    return due


def _remove(gauge: Gauge, *labels: str) -> None:
    with contextlib.suppress(KeyError):
        gauge.remove(*labels)
