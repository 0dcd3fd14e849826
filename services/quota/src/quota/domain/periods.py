"""Counting windows: which period an instant of usage belongs to, and whether it is still open.

Closed periods: an event is assigned to the window that contains its `occurred_at`. A window
keeps accepting events until `grace` after its end (late, delayed senders); after that the event
is refused, because the period may already be invoiced. For billing periods only the current and
the previous period are known (from the subscription snapshots); usage after the known end of the
current period, before the renewal snapshot arrives, counts in the window that starts at that end
(the next period starts where the current one ends).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from quota.domain.catalog import Period

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Window:
    start: datetime
    end: datetime | None  # None: open-ended (standing counts, or a period not renewed yet)

    def contains(self, instant: datetime) -> bool:
        return self.start <= instant and (self.end is None or instant < self.end)

    def open_at(self, now: datetime, grace: timedelta) -> bool:
        return self.end is None or now < self.end + grace


@dataclass(frozen=True)
class BillingPeriod:
    start: datetime
    end: datetime
    previous_start: datetime | None = None


def calendar_day(at: datetime) -> Window:
    start = at.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return Window(start, start + timedelta(days=1))


def calendar_month(at: datetime) -> Window:
    utc = at.astimezone(UTC)
    start = utc.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    end = (
        start.replace(year=start.year + 1, month=1)
        if start.month == 12
        else start.replace(month=start.month + 1)
    )
    return Window(start, end)


def window_for(period: Period, at: datetime, billing: BillingPeriod | None) -> Window | None:
    """The window containing `at`, or None when it lies in a billing period no longer known.

    Tenants without a billing period (the free fallback plan) count billing-period keys per
    calendar month.
    """
    if period is Period.NONE:
        return Window(EPOCH, None)
    if period is Period.CALENDAR_DAY:
        return calendar_day(at)
    if period is Period.CALENDAR_MONTH or billing is None:
        return calendar_month(at)
    if at >= billing.end:
        return Window(billing.end, None)
    if at >= billing.start:
        return Window(billing.start, billing.end)
    if billing.previous_start is not None and at >= billing.previous_start:
        return Window(billing.previous_start, billing.start)
    return None
