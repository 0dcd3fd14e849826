"""The record of past attempt outcomes the estimator learns from, reloaded now and then."""

from __future__ import annotations

from datetime import datetime, timedelta

from billing_common.clock import Clock
from dunning.app.ports import CaseSession
from dunning.domain.estimator import OutcomeCounts


class OutcomeStatistics:
    """Counts are aggregated in the database and kept for `refresh`: scheduling one attempt must
    not re-read the whole history, and a minute-old view of it estimates just as well. They are
    read in the session of whoever finds them due (see `CaseSession.outcome_counts`)."""

    def __init__(self, clock: Clock, refresh: timedelta, window: timedelta) -> None:
        self._clock = clock
        self._refresh = refresh
        self._window = window
        self._counts = OutcomeCounts()
        self._loaded_at: datetime | None = None

    async def counts(self, session: CaseSession) -> OutcomeCounts:
        now = self._clock.now()
        if self._loaded_at is None or not (timedelta(0) <= now - self._loaded_at < self._refresh):
            self._counts = await session.outcome_counts(now - self._window)
            self._loaded_at = now
        return self._counts
