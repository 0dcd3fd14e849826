"""Usage: checks and records on the hot counters, durable records, thresholds, summaries.

A record goes: resolve the tenant (cached) -> pick the window of its `occurred_at` -> one atomic
check-and-add on the counter (with the idempotency check) -> durable insert into the ledger
(threshold alerts in the same transaction) -> answer. If the insert finds the idempotency key
already stored (a replay after the hot store lost its memory of it), or fails, the counter is
set back, so the counters only ever hold what the ledger holds (plus in-flight work).
A missing counter is rebuilt from the ledger before use.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import NamedTuple

from billing_common.clock import Clock
from billing_common.db import CommitOutcomeUnknown
from billing_common.errors import BillingError, FailedPrecondition, InvalidArgument, Unavailable, Violations
from billing_common.faults import is_dependency_failure
from billing_common.grouping import GroupCommit
from quota.app.entitlements import Entitlements
from quota.app.ports import (
    AppendStatus,
    CatalogStore,
    CounterOp,
    CounterRef,
    CounterResult,
    Counters,
    CounterStatus,
    TenantPeriod,
    TenantStore,
    ThresholdAlert,
    UsageLedger,
    UsageMetrics,
    UsageRecord,
)
from quota.domain.catalog import KEY_PATTERN, ActiveAddOn, Behaviour, Entitlement, Period
from quota.domain.periods import Window, window_for
from quota.domain.pricing import UsageCharge, price_usage
from quota.domain.quota import (
    REASON_DENIED,
    REASON_NOT_ENTITLED,
    CheckDecision,
    after_counting,
    crossed_thresholds,
    decide,
    refused,
)
from quota.domain.resolution import Resolution, Resolved

log = logging.getLogger(__name__)

MAX_REBUILD_ROUNDS = 3
MAX_CLOCK_SKEW = timedelta(minutes=5)
SETTLE_INTERVAL = timedelta(seconds=1)
SETTLE_BATCH = 500
NOTHING_COUNTED = "usage could not be stored; nothing was counted, retry with the same keys"
MAYBE_COUNTED = "usage may or may not have been stored; retry with the same keys to learn which"


@dataclass(frozen=True)
class UsageEventIn:
    tenant_id: str
    key: str
    delta: int
    idempotency_key: str
    occurred_at: datetime | None


class CheckResult(NamedTuple):  # built by every check, like its CheckDecision
    key: str
    decision: CheckDecision
    window: Window | None


class UsageOutcome(StrEnum):
    COUNTED = "counted"
    DUPLICATE = "duplicate"
    DENIED = "denied"
    INVALID = "invalid"


@dataclass(frozen=True)
class Summary:
    """A tenant's period: the priced total of each key (in key order), the currency, and each
    stretch of the period in which it held an add-on."""

    charges: list[UsageCharge]
    keys: list[str]
    currency: str
    add_ons: list[ActiveAddOn]


@dataclass(frozen=True)
class RecordResult:
    idempotency_key: str
    outcome: UsageOutcome
    check: CheckResult | None
    error_field: str = ""
    error: str = ""
    conflict: bool = False  # the idempotency key belongs to a different event


@dataclass(frozen=True)
class _Planned:
    index: int
    event: UsageEventIn
    entitlement: Entitlement
    window: Window
    record: UsageRecord  # as it will be stored, occurred_at fixed when the window was chosen
    op: CounterOp
    thresholds: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class _Storing:
    item: _Planned
    used: int  # the counter after this event (after the earlier attempt's, when not added now)
    added_now: bool  # this call's script added it; else the counter held it already


class _Unsettled:
    """Events a failure left the counter holding while the ledger may lack them.

    Settling stores each one (`ON CONFLICT DO NOTHING`) while its idempotency entry still says the
    counter holds it; a key the ledger holds for another event takes the counter back instead.
    A retry with the same key settles its event on the spot; this covers callers that gave up.
    """

    def __init__(self) -> None:
        self._events: dict[tuple[str, str], _Planned] = {}

    def add(self, items: Iterable[_Planned]) -> None:
        for item in items:
            self._events[(item.event.tenant_id, item.event.idempotency_key)] = item

    async def settle(self, ledger: UsageLedger, counters: Counters) -> int:
        batch = list(self._events.items())[:SETTLE_BATCH]
        if not batch:
            return 0
        held = await counters.held([item.op for _, item in batch])
        kept = [item for (_, item), holds in zip(batch, held, strict=True) if holds]
        statuses = await ledger.append([item.record for item in kept], []) if kept else []
        mismatched = [
            item.op for item, status in zip(kept, statuses, strict=True) if status is AppendStatus.MISMATCH
        ]
        if mismatched:
            await counters.undo(mismatched)
        for identity, _ in batch:
            self._events.pop(identity, None)
        stored = sum(status is AppendStatus.STORED for status in statuses)
        if stored:
            log.info("usage left open by a failure was stored", extra={"events": stored})
        return len(batch)


@dataclass(frozen=True, slots=True)
class _Target:
    """Where a check of one key counts, for as long as the resolution and the window stand."""

    resolution: Resolution
    entitlement: Entitlement
    window: Window
    counter: CounterRef


class _Targets:
    """The targets of recent checks: a busy tenant's checks do not pick a window every time."""

    MAX_KEPT = 65_536  # (tenant, key) pairs; all are dropped at once when full

    def __init__(self) -> None:
        self._kept: dict[tuple[str, str], _Target] = {}

    def find(self, resolution: Resolution, key: str, now: datetime) -> _Target | str:
        """The target of `key` at `now`, or why the tenant may not use it."""
        kept = self._kept.get((resolution.tenant_id, key))
        if kept is not None and kept.resolution is resolution and kept.window.contains(now):
            return kept
        found = _entitled(resolution, key)
        if isinstance(found, str):
            return found
        window = window_for(found.entitlement.period, now, resolution.billing)
        assert window is not None  # the current instant always has a window
        counter = CounterRef(resolution.tenant_id, key, window.start, window.end)
        if len(self._kept) >= self.MAX_KEPT:
            self._kept.clear()
        target = self._kept[(resolution.tenant_id, key)] = _Target(
            resolution, found.entitlement, window, counter
        )
        return target


# One call's durable usage: its records and the threshold alerts they cross.
_Append = tuple[list[UsageRecord], list[ThresholdAlert]]


class Usage:
    def __init__(
        self,
        entitlements: Entitlements,
        catalog: CatalogStore,
        tenants: TenantStore,
        counters: Counters,
        ledger: UsageLedger,
        clock: Clock,
        late_grace: timedelta,
        metrics: UsageMetrics,
    ) -> None:
        self._entitlements = entitlements
        self._metrics = metrics
        self._catalog = catalog
        self._tenants = tenants
        self._counters = counters
        self._ledger = ledger
        # Concurrent single records are appended together: while one insert runs, the next queue up.
        self._committer: GroupCommit[_Append, list[AppendStatus]] = GroupCommit(self._append_together)
        self._unsettled = _Unsettled()
        self._clock = clock
        self._late_grace = late_grace
        self._targets = _Targets()

    # ------------------------------------------------------------ checks

    async def check_one(self, tenant_id: str, key: str, amount: int) -> CheckResult:
        """CheckQuota, the platform's hottest call: no list is built when all is in memory."""
        _refuse_bad_tenant(tenant_id)
        _refuse_bad_check(key, amount, "")
        now = self._clock.now()
        resolution = self._entitlements.known(tenant_id, now) or await self._entitlements.resolution(
            tenant_id
        )
        target = self._targets.find(resolution, key, now)
        if isinstance(target, str):
            result = CheckResult(key, refused(0, target), None)
        else:
            used = self._counters.known(target.counter)
            if used is None:
                (used,) = await self._read([target.counter])
            result = CheckResult(key, decide(target.entitlement, used, amount or 1), target.window)
        self._metrics.check_decided(result.decision)
        return result

    async def check(self, tenant_id: str, checks: Sequence[tuple[str, int]]) -> list[CheckResult]:
        """Answers for (key, amount) pairs of one tenant, from one read; never changes usage."""
        _refuse_bad_tenant(tenant_id)
        for index, (key, amount) in enumerate(checks):
            _refuse_bad_check(key, amount, f"checks[{index}].")
        now = self._clock.now()
        resolution = self._entitlements.known(tenant_id, now) or await self._entitlements.resolution(
            tenant_id
        )
        targets = [self._targets.find(resolution, key, now) for key, _ in checks]
        counters = [target.counter for target in targets if not isinstance(target, str)]
        values = [self._counters.known(counter) for counter in counters]
        used = iter(values if None not in values else await self._read(counters))
        results = [
            CheckResult(key, refused(0, target), None)
            if isinstance(target, str)
            else CheckResult(key, decide(target.entitlement, next(used) or 0, amount or 1), target.window)
            for (key, amount), target in zip(checks, targets, strict=True)
        ]
        for result in results:
            self._metrics.check_decided(result.decision)
        return results

    async def _read(self, counters: list[CounterRef]) -> list[int]:
        if not counters:
            return []
        values = await self._counters.read(counters)
        if None in values:
            await self._rebuild([c for c, value in zip(counters, values, strict=True) if value is None])
            values = await self._counters.read(counters)
        return [v or 0 for v in values]

    async def _rebuild(self, counters: Sequence[CounterRef]) -> None:
        """Seed missing counters from the ledger, together: a new day finds every tenant's daily
        counters missing at once."""
        totals = await self._ledger.window_totals(counters)
        await self._counters.seed(dict(zip(counters, totals, strict=True)))

    # ------------------------------------------------------------ records

    async def record(self, events: Sequence[UsageEventIn], *, group_commit: bool) -> list[RecordResult]:
        now = self._clock.now()
        results: list[RecordResult | None] = [None] * len(events)
        planned: list[_Planned] = []
        # The tenants' entitlements first, the uncached ones loaded together.
        resolutions = await self._entitlements.resolutions(
            event.tenant_id for event in events if not _invalid(event, now)
        )
        windows: dict[tuple[str, Period, datetime], Window | None] = {}  # events of one instant share one
        for index, event in enumerate(events):
            problem = _invalid(event, now)
            if problem:
                results[index] = RecordResult(event.idempotency_key, UsageOutcome.INVALID, None, *problem)
                continue
            resolution = resolutions[event.tenant_id]
            found = _entitled(resolution, event.key)
            if isinstance(found, str):
                check = CheckResult(event.key, refused(0, found), None)
                results[index] = RecordResult(event.idempotency_key, UsageOutcome.DENIED, check, "key", found)
                continue
            entitlement = found.entitlement
            if event.delta < 0 and entitlement.period is not Period.NONE:
                results[index] = RecordResult(
                    event.idempotency_key,
                    UsageOutcome.INVALID,
                    None,
                    "delta",
                    "may be negative only for standing counts (period none)",
                )
                continue
            occurred = event.occurred_at or now
            instant = (event.tenant_id, entitlement.period, occurred)
            if instant not in windows:
                windows[instant] = window_for(entitlement.period, occurred, resolution.billing)
            window = windows[instant]
            if window is None or not window.open_at(now, self._late_grace):
                results[index] = RecordResult(
                    event.idempotency_key,
                    UsageOutcome.INVALID,
                    None,
                    "occurred_at",
                    "falls in a closed period (past the grace for late usage)",
                )
                continue
            counter = CounterRef(event.tenant_id, event.key, window.start, window.end)
            record = UsageRecord(
                event.tenant_id, event.key, event.delta, event.idempotency_key, occurred, window.start
            )
            deny_over = entitlement.limit if entitlement.behaviour is Behaviour.DENY else None
            op = CounterOp(counter, event.idempotency_key, record.fingerprint, event.delta, deny_over)
            planned.append(_Planned(index, event, entitlement, window, record, op, resolution.thresholds))

        # From the first counter change on, the work ends even if the caller goes away (a deadline):
        # what the counters hold and what the ledger holds must come out the same.
        await _finish_even_if_abandoned(self._count_and_store(planned, results, group_commit=group_commit))
        return [r for r in results if r is not None]

    async def _count_and_store(
        self, planned: list[_Planned], results: list[RecordResult | None], *, group_commit: bool
    ) -> None:
        counter_results = await self._apply(planned)
        to_store: list[_Storing] = []
        for item, outcome in zip(planned, counter_results, strict=True):
            event, entitlement = item.event, item.entitlement
            if outcome.status is CounterStatus.COUNTED:
                to_store.append(_Storing(item, outcome.used, added_now=True))
                continue
            if outcome.status is CounterStatus.DUPLICATE:
                # The counter holds it from an earlier attempt; the ledger is made sure of below.
                to_store.append(_Storing(item, outcome.used, added_now=False))
                continue
            check = CheckResult(event.key, decide(entitlement, outcome.used, event.delta), item.window)
            if outcome.status is CounterStatus.MISMATCH:
                results[item.index] = RecordResult(
                    event.idempotency_key,
                    UsageOutcome.INVALID,
                    None,
                    "idempotency_key",
                    "was already used for a different usage event",
                    conflict=True,
                )
            elif outcome.status is CounterStatus.NEGATIVE:
                results[item.index] = RecordResult(
                    event.idempotency_key, UsageOutcome.INVALID, None, "delta", "would take usage below zero"
                )
            else:
                results[item.index] = RecordResult(
                    event.idempotency_key, UsageOutcome.DENIED, check, "key", check.decision.reason
                )
        if to_store:
            await self._store(to_store, results, group_commit=group_commit)

    async def _apply(self, planned: list[_Planned]) -> list[CounterResult]:
        results = await self._counters.apply([p.op for p in planned])
        for _ in range(MAX_REBUILD_ROUNDS):
            missing = [i for i, r in enumerate(results) if r.status is CounterStatus.MISSING]
            if not missing:
                return results
            await self._rebuild(list({planned[i].op.counter: None for i in missing}))
            retried = await self._counters.apply([planned[i].op for i in missing])
            for i, result in zip(missing, retried, strict=True):
                results[i] = result
        raise Unavailable("usage counters keep disappearing; try again")

    async def _store(
        self, to_store: list[_Storing], results: list[RecordResult | None], *, group_commit: bool
    ) -> None:
        """Write the records and leave every counter equal to what the ledger holds.

        A record the counter held before this call (its key was seen) is written too: an earlier
        attempt may have failed after counting, and `ON CONFLICT DO NOTHING` tells which.
        """
        records = [storing.item.record for storing in to_store]
        alerts: list[ThresholdAlert] = []
        for storing in to_store:
            item, used_after = storing.item, storing.used
            event = item.event
            limit = item.entitlement.limit
            if not storing.added_now:
                continue
            for percent in crossed_thresholds(item.thresholds, limit, used_after - event.delta, used_after):
                assert limit is not None
                alerts.append(
                    ThresholdAlert(
                        event.tenant_id,
                        event.idempotency_key,
                        event.key,
                        percent,
                        used_after,
                        limit,
                        item.window.start,
                        item.window.end,
                    )
                )
        try:
            if group_commit:
                (statuses,) = await self._committer.submit([(records, alerts)])
            else:
                statuses = await self._ledger.append(records, alerts)
        except CommitOutcomeUnknown as exc:
            # Stored or not: the counters keep these events and the ledger is made to agree.
            self._unsettled.add(storing.item for storing in to_store)
            raise Unavailable(MAYBE_COUNTED) from exc
        except Exception as exc:
            # Nothing was stored: take back what this call counted. What the counter held before
            # stays, and its earlier attempt is settled.
            added = [storing.item for storing in to_store if storing.added_now]
            self._unsettled.add(storing.item for storing in to_store if not storing.added_now)
            try:
                await self._counters.undo([item.op for item in added])
            except Exception:
                self._unsettled.add(added)
                raise Unavailable(MAYBE_COUNTED) from exc
            if not is_dependency_failure(exc):
                raise
            raise Unavailable(NOTHING_COUNTED if len(added) == len(to_store) else MAYBE_COUNTED) from exc
        undo = [
            storing.item.op
            for storing, status in zip(to_store, statuses, strict=True)
            if status is AppendStatus.MISMATCH or (storing.added_now and status is AppendStatus.DUPLICATE)
        ]
        if undo:
            await self._counters.undo(undo)
        for storing, status in zip(to_store, statuses, strict=True):
            item, used = storing.item, storing.used
            event, entitlement = item.event, item.entitlement
            if status is AppendStatus.STORED:
                check = CheckResult(event.key, after_counting(entitlement, used), item.window)
                results[item.index] = RecordResult(event.idempotency_key, UsageOutcome.COUNTED, check)
            elif status is AppendStatus.DUPLICATE:
                before = used - event.delta if storing.added_now else used
                check = CheckResult(event.key, after_counting(entitlement, before), item.window)
                results[item.index] = RecordResult(event.idempotency_key, UsageOutcome.DUPLICATE, check)
            else:
                results[item.index] = RecordResult(
                    event.idempotency_key,
                    UsageOutcome.INVALID,
                    None,
                    "idempotency_key",
                    "was already used for a different usage event",
                    conflict=True,
                )

    async def settle(self) -> int:
        """Store the events whose outcome a failure left open, where the counter still holds them."""
        return await self._unsettled.settle(self._ledger, self._counters)

    async def _append_together(self, appends: list[_Append]) -> list[list[AppendStatus]]:
        statuses = await self._ledger.append(
            [record for records, _ in appends for record in records],
            [alert for _, alerts in appends for alert in alerts],
        )
        answers, offset = [], 0
        for records, _ in appends:
            answers.append(statuses[offset : offset + len(records)])
            offset += len(records)
        return answers

    async def settle_forever(self, interval: timedelta = SETTLE_INTERVAL) -> None:
        while True:
            await asyncio.sleep(interval.total_seconds())
            try:
                await self.settle()
            except Exception as exc:
                if not is_dependency_failure(exc):
                    raise
                log.debug("unsettled usage waits for the database", extra={"error": repr(exc)})

    # ------------------------------------------------------------ summaries

    async def summary(self, tenant_id: str, start: datetime | None, end: datetime | None) -> Summary:
        """Totals per key in [start, end), priced by the tenant's plan (with its add-ons), and the
        add-ons it held in the window."""
        (summary,) = await self.summaries([(tenant_id, start, end)])
        if isinstance(summary, BillingError):
            raise summary
        return summary

    async def summaries(
        self, asked: Sequence[tuple[str, datetime | None, datetime | None]]
    ) -> list[Summary | BillingError]:
        """Each summary as `summary` gives it, or the error it would raise: the records of every
        period in one query, their add-ons in another, each tenant's plan resolved once."""
        answers: list[Summary | BillingError | None] = [None] * len(asked)
        periods: dict[int, TenantPeriod] = {}
        for index, (tenant_id, start, end) in enumerate(asked):
            violations = Violations()
            violations.check(bool(tenant_id), "tenant_id", "is required")
            violations.check(start is not None, "period_start", "is required")
            violations.check(
                end is not None and (start is None or end > start),
                "period_end",
                "is required and after period_start",
            )
            if violations.items:
                answers[index] = InvalidArgument(violations.items)
            else:
                assert start is not None and end is not None
                periods[index] = TenantPeriod(tenant_id, start, end)
        tenants = sorted({period.tenant_id for period in periods.values()})
        pricing = dict(
            zip(
                tenants,
                await asyncio.gather(*(self._pricing(tenant) for tenant in tenants), return_exceptions=True),
                strict=True,
            )
        )
        priced = {
            index: period
            for index, period in periods.items()
            if not isinstance(pricing[period.tenant_id], BaseException)
        }
        totals = await self._ledger.totals(list(priced.values())) if priced else []
        held = await self._tenants.add_ons_held(list(priced.values())) if priced else []
        for index, period in periods.items():
            found = pricing[period.tenant_id]
            if isinstance(found, BillingError):
                answers[index] = found
            elif isinstance(found, BaseException):
                raise found
        for (index, _), quantities, add_ons in zip(priced.items(), totals, held, strict=True):
            found = pricing[periods[index].tenant_id]
            assert not isinstance(found, BaseException)
            entitlements, currency = found
            keys = sorted(quantities)
            charges = []
            for key in keys:
                entitlement = entitlements.get(key)
                included = entitlement.included_quantity if entitlement else quantities[key]
                price = entitlement.unit_price if entitlement else None
                charges.append(price_usage(quantities[key], included, price, currency))
            answers[index] = Summary(charges, keys, currency, add_ons)
        return [answer for answer in answers if answer is not None]

    async def _pricing(self, tenant_id: str) -> tuple[dict[str, Entitlement], str]:
        """The entitlements that price the tenant's usage, and the plan's currency."""
        resolution = await self._entitlements.resolution(tenant_id)
        plan = resolution.plan
        entitlements = {k: r.entitlement for k, r in resolution.entitlements.items()}
        if plan is None and resolution.subscription is not None:
            plan = await self._catalog.get_plan(
                resolution.subscription.plan_code, resolution.subscription.plan_version
            )
            entitlements = {e.key: e for e in plan.spec.entitlements} if plan else {}
        if plan is None:
            raise FailedPrecondition(f"tenant {tenant_id} has no plan to price usage with")
        return entitlements, plan.spec.price.currency


def _refuse_bad_tenant(tenant_id: str) -> None:
    if not tenant_id:
        raise InvalidArgument.of("tenant_id", "is required")


def _refuse_bad_check(key: str, amount: int, field_prefix: str) -> None:
    if amount < 0:
        raise InvalidArgument.of(f"{field_prefix}amount", "must not be negative")
    if not key:
        raise InvalidArgument.of(f"{field_prefix}key", "is required")


def _entitled(resolution: Resolution, key: str) -> Resolved | str:
    if resolution.denied:
        return REASON_DENIED
    found = resolution.entitlements.get(key)
    return REASON_NOT_ENTITLED if found is None else found


async def _finish_even_if_abandoned(work: Coroutine[object, object, None]) -> None:
    """Await `work`; if this caller is cancelled, `work` still runs to its end."""
    task = asyncio.ensure_future(work)
    task.add_done_callback(lambda done: done.cancelled() or done.exception())
    await asyncio.shield(task)


def _invalid(event: UsageEventIn, now: datetime) -> tuple[str, str] | None:
    if not 0 < len(event.tenant_id) <= 200:
        return "tenant_id", "is required (1-200 characters)"
    if not KEY_PATTERN.match(event.key):
        return "key", "is not a valid entitlement key"
    if not 0 < len(event.idempotency_key) <= 200:
        return "idempotency_key", "is required (1-200 characters)"
    if event.delta == 0:
        return "delta", "must not be zero"
    if event.occurred_at is not None and event.occurred_at > now + MAX_CLOCK_SKEW:
        return "occurred_at", "is in the future"
    return None
