"""Prometheus metrics of dunning: the `CaseMetrics` the use cases and the case store report to, and
gauges read from the database, so every pod agrees."""

from __future__ import annotations

from datetime import timedelta

import asyncpg
from prometheus_client import Counter, Gauge, Histogram

from billing_common.clock import Clock
from dunning.domain.cases import ResultKind
from dunning.domain.model import TERMINAL_STATES, CaseState

CASES = Gauge("dunning_cases", "Unfinished dunning cases by state", ["state"])
DUE_BACKLOG = Gauge(
    "dunning_due_attempts_backlog", "Attempts whose time has come and that no worker has started yet"
)
BACKLOG_AGE = Gauge(
    "dunning_due_attempts_backlog_age_seconds",
    "How long the oldest attempt whose time has come has waited for a worker (0 when none waits)",
)
ATTEMPTS = Counter("dunning_attempts_total", "Retry attempts by what recurring answered", ["outcome"])
CASES_ENDED = Counter("dunning_cases_ended_total", "Cases that ended, by final state", ["state"])
RECOVERY_RATE = Gauge(
    "dunning_recovery_rate",
    "Of the cases that ended in the last 30 days recovered or exhausted, the share recovered",
)
TIME_TO_RECOVERY = Histogram(
    "dunning_time_to_recovery_seconds",
    "From opening a case to recovering its payment",
    buckets=[h * 3600 for h in (1, 6, 24, 48, 96, 168, 336, 720)],
)
RATE_WINDOW = timedelta(days=30)
OPEN_STATES = [s.value for s in CaseState if s not in TERMINAL_STATES]


class PrometheusCaseMetrics:
    def attempt_answered(self, kind: ResultKind) -> None:
        ATTEMPTS.labels(kind.value).inc()

    def case_ended(self, state: CaseState, open_for: timedelta) -> None:
        CASES_ENDED.labels(state.value).inc()
        if state is CaseState.RECOVERED:
            TIME_TO_RECOVERY.observe(open_for.total_seconds())


class MetricsRefresher:
    def __init__(self, pool: asyncpg.Pool, clock: Clock) -> None:
        self._pool = pool
        self._clock = clock

    async def refresh(self) -> None:
        now = self._clock.now()
        async with self._pool.acquire() as conn:
            by_state = {
                r["state"]: r["n"]
                for r in await conn.fetch(
                    "SELECT state, count(*) AS n FROM cases WHERE state = ANY($1::text[]) GROUP BY state",
                    OPEN_STATES,
                )
            }
            backlog = await conn.fetchrow(
                """SELECT count(*) AS n, min(due_at) AS oldest FROM cases
                   WHERE due_at <= $1 AND state = 'retry_scheduled'""",
                now,
            )
            ended = await conn.fetchrow(
                """SELECT count(*) FILTER (WHERE state = 'recovered') AS recovered, count(*) AS total
                   FROM cases WHERE ended_at >= $1 AND state IN ('recovered', 'exhausted')""",
                now - RATE_WINDOW,
            )
        for state in OPEN_STATES:
            CASES.labels(state).set(by_state.get(state, 0))
        assert backlog is not None  # an aggregate always has its row
        DUE_BACKLOG.set(backlog["n"])
        BACKLOG_AGE.set((now - backlog["oldest"]).total_seconds() if backlog["oldest"] else 0)
        if ended and ended["total"]:
            RECOVERY_RATE.set(ended["recovered"] / ended["total"])
