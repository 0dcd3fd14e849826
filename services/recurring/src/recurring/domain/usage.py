"""Usage billed in arrears: which due occurrences bill the usage of the period behind them, the
period quota is asked about, and what becomes of an item whose usage quota could not give."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from billing_common.errors import Unavailable
from recurring.domain.invoicing import PeriodUsage
from recurring.domain.runs import WorkItem
from recurring.domain.schedule import midnight
from recurring.domain.status import BILLABLE
from recurring.domain.subscription import Subscription


@dataclass(frozen=True)
class UsagePeriod:
    """A tenant's usage to bill: [start, end)."""

    tenant: str
    start: datetime
    end: datetime


@dataclass(frozen=True)
class Usages:
    """What quota's answers mean for a batch, by item id: the usage to bill (none: nothing to add),
    how long an item waits and why when quota could not give it now, and the error of an item whose
    usage failed."""

    found: dict[int, PeriodUsage] = field(default_factory=dict)
    waiting: dict[int, tuple[timedelta, str]] = field(default_factory=dict)
    failed: dict[int, Exception] = field(default_factory=dict)


def usage_billed(sub: Subscription, item: WorkItem) -> bool:
    """A plan subscription's occurrence that will be invoiced, with a period behind it to bill usage of."""
    return (
        bool(sub.plan_code)
        and sub.status in BILLABLE
        and sub.next_billing_date == item.due_date
        and sub.current_period_start < item.due_date
    )


def periods_to_ask(
    items: Sequence[WorkItem],
    subscriptions: Mapping[str, Subscription],
    invoiced: Collection[str],
    zone: ZoneInfo,
) -> list[tuple[WorkItem, UsagePeriod]]:
    """The items whose occurrence is still to invoice with usage, each with the period quota is
    asked about: from the start of the current period to the due date, midnight to midnight in the
    billing time zone. `invoiced` holds the occurrence keys invoiced already."""
    return [
        (
            item,
            UsagePeriod(
                sub.account_id, midnight(sub.current_period_start, zone), midnight(item.due_date, zone)
            ),
        )
        for item in items
        if (sub := subscriptions.get(item.subscription_id)) is not None
        and item.occurrence_key not in invoiced
        and usage_billed(sub, item)
    ]


def sort_answers(
    asked: Sequence[WorkItem], answers: Sequence[PeriodUsage | Exception], defer_delay: timedelta
) -> Usages:
    """quota's answers (one per asked item, in order) sorted: usage to bill; quota unavailable, the
    item waits `defer_delay` (nobody's failure); any other error, a failure of ours."""
    usages = Usages()
    for item, answer in zip(asked, answers, strict=True):
        if isinstance(answer, Unavailable):
            usages.waiting[item.item_id] = (defer_delay, f"usage unavailable: {answer.message}")
        elif isinstance(answer, Exception):
            usages.failed[item.item_id] = answer
        else:
            usages.found[item.item_id] = answer
    return usages
