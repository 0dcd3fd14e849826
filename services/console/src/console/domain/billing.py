"""Billing read for people: runs and their progress, revenue billed per day, an account's ledger."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

# Invoices that bill nothing: a void invoice was taken back.
NOT_BILLED = ("VOID", "DRAFT")


@dataclass(frozen=True)
class RunSummary:
    run_id: str
    billing_date: date | None
    kind: str
    state: str
    progress_percent: float
    due: int
    charged: int
    failed: int
    parked: int
    halted_gateways: tuple[str, ...]
    duration: timedelta | None


@dataclass(frozen=True)
class RunItemRow:
    subscription_id: str
    due_date: date | None
    gateway: str
    outcome: str
    reason: str
    invoice_id: str

    @property
    def parked(self) -> bool:
        """Set aside for a reason of ours: it waits for someone to fix its record and resume."""
        return self.outcome == "PARKED"


def run_items(items: Iterable[Mapping[str, Any]]) -> list[RunItemRow]:
    """A run's items for review: the parked ones first, since they wait for someone; otherwise in
    the order they were queued."""
    rows = [
        RunItemRow(
            subscription_id=str(item.get("subscription_id", "")),
            due_date=item.get("due_date"),
            gateway=str(item.get("gateway", "")),
            outcome=str(item.get("status", "")),
            reason=str(item.get("reason", "")),
            invoice_id=str(item.get("invoice_id", "")),
        )
        for item in items
    ]
    return sorted(rows, key=lambda row: not row.parked)


def run_summary(run: Mapping[str, Any]) -> RunSummary:
    counts = run.get("counts") or {}
    return RunSummary(
        run_id=run["run_id"],
        billing_date=run.get("billing_date"),
        kind=str(run.get("kind", "")),
        state=str(run.get("state", "")),
        progress_percent=run.get("progress_per_mille", 0) / 10,
        due=counts.get("due", 0),
        charged=counts.get("charged", 0),
        failed=counts.get("failed", 0),
        parked=counts.get("parked", 0),
        halted_gateways=tuple(run.get("halted_gateways", ())),
        duration=_took(run),
    )


def _took(run: Mapping[str, Any]) -> timedelta | None:
    """How long the run's work took: its working time when recurring reports one (the suite's test
    clock stands still while a day's work runs, so the clock's duration is zero there), else the
    duration on the service's clock."""
    working_time: timedelta | None = run.get("working_time")
    return working_time if working_time is not None else run.get("duration")


def runs_of_day(runs: Iterable[RunSummary], day: date) -> list[RunSummary]:
    return [r for r in runs if r.billing_date == day]


def revenue_by_day(invoices: Iterable[Mapping[str, Any]]) -> dict[str, list[tuple[date, int]]]:
    """Per currency, the invoice totals billed on each billing date, in minor units."""
    sums: dict[str, dict[date, int]] = defaultdict(lambda: defaultdict(int))
    for invoice in invoices:
        total, day = invoice.get("total"), invoice.get("billing_date")
        if total is None or day is None or str(invoice.get("status")) in NOT_BILLED:
            continue
        sums[total["currency"]][day] += total["amount_minor"]
    return {currency: sorted(days.items()) for currency, days in sorted(sums.items())}


def run_durations(runs: Iterable[RunSummary]) -> list[tuple[str, float]]:
    """Finished runs, oldest first: label and seconds."""
    done = [r for r in runs if r.duration is not None and r.billing_date is not None]
    done.sort(key=lambda r: (r.billing_date or date.min, r.kind))
    # A run that took no time is a duration too (an old run under the test clock has nothing else).
    return [
        (f"{r.billing_date} {r.kind.lower()}", r.duration.total_seconds())
        for r in done
        if r.duration is not None
    ]


# The span a usage figure counts over: [start, end).
Period = tuple[datetime, datetime]


@dataclass(frozen=True)
class UsageRow:
    key: str
    used: int | None  # None: no usage read (the entitlement has no period)
    limit: int | None  # None: unlimited
    sources: str  # where the limit comes from: plan, add-on, override, grant
    period: Period | None  # None: no period of its own (usage beyond the entitlements)

    @property
    def percent(self) -> float | None:
        if self.used is None or self.limit is None:
            return None
        return 100.0 if self.limit == 0 else round(100 * self.used / self.limit, 1)


def _period(resolved: Mapping[str, Any]) -> Period | None:
    start, end = resolved.get("period_start"), resolved.get("period_end")
    if start is not None and end is not None and end > start:
        return start, end
    return None


def usage_periods(entitlements: Iterable[Mapping[str, Any]]) -> list[Period]:
    """The periods the account's entitlements count usage over, each once: an entitlement counts
    over its own period (the billing period, a calendar day, ...), so each needs its own figures."""
    periods: list[Period] = []
    for resolved in entitlements:
        period = _period(resolved)
        if period is not None and period not in periods:
            periods.append(period)
    return periods


def usage_against_entitlements(
    entitlements: Iterable[Mapping[str, Any]],
    totals_by_period: Mapping[Period, Iterable[Mapping[str, Any]]],
) -> list[UsageRow]:
    """Each entitlement against the usage of its key in its own period; then the keys used in the
    longest period that no entitlement names."""
    used = {
        period: {t["key"]: t.get("quantity", 0) for t in totals}
        for period, totals in totals_by_period.items()
    }
    rows, entitled = [], set()
    for resolved in entitlements:
        entitlement = resolved.get("entitlement") or {}
        key = entitlement.get("key", "")
        period = _period(resolved)
        sources = ", ".join(
            f"{s.get('kind', '')} {s.get('reference', '')}".strip() for s in resolved.get("sources", ())
        )
        limit = None if entitlement.get("unlimited") else entitlement.get("limit", 0)
        # Read for its period and not in the totals: nothing used yet.
        quantity = used[period].get(key, 0) if period in used else None
        rows.append(UsageRow(key, quantity, limit, sources, period))
        entitled.add(key)
    longest = max(used, key=lambda p: p[1] - p[0], default=None)
    unentitled = (
        sorted((k, q) for k, q in used.get(longest, {}).items() if k not in entitled) if longest else []
    )
    rows += [UsageRow(key, quantity, None, "no entitlement", longest) for key, quantity in unentitled]
    return rows
