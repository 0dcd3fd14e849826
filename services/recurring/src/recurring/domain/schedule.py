"""Billing frequencies, due dates and billing periods.

Monthly subscriptions are due on their anchor day; an anchor of 29, 30 or 31 falls on the last
day of a shorter month (28 or 29 February, 30 April, ...), so every month has exactly one due
date. Weekly, bi-weekly and four-weekly subscriptions are due every 7, 14 and 28 days from their
first billing date; a one-time subscription is due once, on its date.
"""

from __future__ import annotations

import calendar
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from billing_common.subscriptions import Frequency

FIXED_STEP_DAYS = {Frequency.WEEKLY: 7, Frequency.BIWEEKLY: 14, Frequency.FOUR_WEEKLY: 28}


def days_in_month(year: int, month: int) -> int:
    return calendar.monthrange(year, month)[1]


def monthly_due_date(year: int, month: int, anchor_day: int) -> date:
    """The one due date of `month` for an anchor day; 29-31 clamp to the month's last day."""
    return date(year, month, min(anchor_day, days_in_month(year, month)))


def is_monthly_due(anchor_day: int, day: date) -> bool:
    return day == monthly_due_date(day.year, day.month, anchor_day)


def first_due_date(frequency: Frequency, start: date, anchor_day: int) -> date:
    """The first due date on or after `start` (monthly: the first anchor day on or after it)."""
    if frequency is not Frequency.MONTHLY:
        return start
    candidate = monthly_due_date(start.year, start.month, anchor_day)
    if candidate >= start:
        return candidate
    year, month = _month_after(start.year, start.month)
    return monthly_due_date(year, month, anchor_day)


def next_due_date(frequency: Frequency, due: date, anchor_day: int) -> date | None:
    """The due date after `due`; None for one-time subscriptions, which are due only once."""
    if frequency is Frequency.ONE_TIME:
        return None
    if frequency is Frequency.MONTHLY:
        year, month = _month_after(due.year, due.month)
        return monthly_due_date(year, month, anchor_day)
    return due + timedelta(days=FIXED_STEP_DAYS[frequency])


@dataclass(frozen=True)
class Period:
    """A billing period [start, end): the invoice on `start` pays for it in advance."""

    start: date
    end: date

    @property
    def days(self) -> int:
        return (self.end - self.start).days


def period_starting(frequency: Frequency, due: date, anchor_day: int) -> Period:
    following = next_due_date(frequency, due, anchor_day)
    return Period(due, following if following is not None else due + timedelta(days=1))


def local_day(now: datetime, zone: ZoneInfo) -> date:
    """The day `now` falls on in the billing time zone."""
    return now.astimezone(zone).date()


def midnight(day: date, zone: ZoneInfo) -> datetime:
    """The instant `day` begins in the billing time zone, in UTC."""
    return datetime.combine(day, time(0), zone).astimezone(UTC)


def _month_after(year: int, month: int) -> tuple[int, int]:
    return (year + 1, 1) if month == 12 else (year, month + 1)
