"""Scans: the trigger only queues a scan record; a worker in some pod claims it under the kind's
cluster-wide lock, pulls signals, evaluates the estate in memory and writes only the changes."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime, timedelta

from billing_common import context, telemetry
from billing_common.clock import Clock
from billing_common.errors import FailedPrecondition, InvalidArgument
from billing_common.locks import Lease, Locks
from billing_common.paging import Page, PageRequest
from tier.app.accounts import Accounts
from tier.app.ports import ProviderError, ScanStore, SignalProvider, TierMetrics, TierStore
from tier.domain.accounts import Signal, SignalKind, normalize_signal_value
from tier.domain.estate import PlannedChange, ScanPlan, TierRecord
from tier.domain.rules import Evaluator
from tier.domain.scans import SCHEDULE_TRIGGER, Scan, ScanKind, ScanState, schedule_key

log = logging.getLogger(__name__)

MAX_KEY_LENGTH = 200
# What each kind pulls before evaluating: FULL everything, SSO and API their one source.
PULLS: dict[ScanKind, frozenset[SignalKind]] = {
    ScanKind.FULL: frozenset(SignalKind),
    ScanKind.SSO: frozenset({SignalKind.SSO_ACTIVE}),
    ScanKind.API: frozenset({SignalKind.API_CLIENTS_ACTIVE}),
}
# The value an account falls back to when a pulled source stops reporting it.
WITHDRAWN = {SignalKind.SSO_ACTIVE: "false", SignalKind.API_CLIENTS_ACTIVE: "0"}


class LockLost(FailedPrecondition):
    """The scan's lock expired while it ran; another pod may be scanning, so this one stops."""


def lock_name(kind: ScanKind) -> str:
    return f"scan:{kind.value}"


def _trace_id() -> str:
    """The current trace id, or the correlation id when traces are not recorded."""
    return telemetry.trace_id() or context.current_correlation_id()


class Scans:
    def __init__(
        self,
        accounts: Accounts,
        tiers: TierStore,
        store: ScanStore,
        locks: Locks,
        providers: Sequence[SignalProvider],
        evaluator: Evaluator,
        clock: Clock,
        metrics: TierMetrics,
        *,
        lock_ttl: timedelta,
        write_batch: int = 20_000,
        chunk_size: int = 20_000,
    ) -> None:
        self._accounts = accounts
        self._tiers = tiers
        self._store = store
        self._locks = locks
        self._lock_ttl = lock_ttl
        self._providers = list(providers)
        self._evaluator = evaluator
        self._clock = clock
        self._metrics = metrics
        self._write_batch = write_batch
        self._chunk_size = chunk_size
        # Set when this pod queues a scan, so its worker starts at once instead of at its next poll.
        self.queued = asyncio.Event()

    # ------------------------------------------------------------------ trigger

    async def request(self, kind: ScanKind | None, trigger: str, idempotency_key: str) -> Scan:
        if kind is None:
            raise InvalidArgument.of("kind", "must be FULL, SSO or API")
        if not idempotency_key or len(idempotency_key) > MAX_KEY_LENGTH:
            raise InvalidArgument.of("idempotency_key", f"is required, at most {MAX_KEY_LENGTH} characters")
        # A scheduled scan starts a trace of its own, always kept; RunScan's is part of the call's.
        with telemetry.span("tier.scan.enqueue", attributes={"scan.kind": kind.value}, keep=True):
            scan, created = await self._store.enqueue(
                kind, trigger, idempotency_key, self._clock.now(), _trace_id(), telemetry.capture()
            )
            if created:
                log.info(
                    "scan queued", extra={"scan_id": scan.scan_id, "kind": kind.value, "trigger": trigger}
                )
        if created:
            self.queued.set()
        return scan

    async def enqueue_scheduled(self, fire: datetime, kinds: Sequence[ScanKind]) -> None:
        """Every pod's scheduler calls this at the same fire time; the key makes it one scan."""
        for kind in kinds:
            await self.request(kind, SCHEDULE_TRIGGER, schedule_key(kind, fire))

    async def get(self, scan_id: str) -> Scan | None:
        return await self._store.get(scan_id)

    async def page(self, page: PageRequest[int]) -> Page[Scan, int]:
        """Newest first; the cursor is the sequence number of the last scan listed (0: the newest)."""
        cut = page.cut(await self._store.page(page.after, page.limit), lambda row: row[0])
        return Page([scan for _, scan in cut.items], cut.next_after)

    # ------------------------------------------------------------------ worker

    async def run_next(self) -> bool:
        """Run one queued scan whose kind's lock is free; False when there was none."""
        for kind in await self._store.queued_kinds():
            async with self._locks.try_hold(lock_name(kind), self._lock_ttl) as lease:
                if lease is None:
                    continue  # another pod runs a scan of this kind; its queue waits
                claimed = await self._store.claim(kind, self._clock.now(), lease)
                if claimed is None:
                    continue
                scan, carrier = claimed
                await self._execute(scan, carrier, lease)
                return True
        return False

    async def _execute(self, scan: Scan, carrier: dict[str, str], lease: Lease) -> None:
        attributes = {"scan.id": scan.scan_id, "scan.kind": scan.kind.value, "scan.trigger": scan.trigger}
        with telemetry.span("tier.scan", parent=carrier, attributes=attributes, keep=True) as span:
            started = time.perf_counter()
            phases: dict[str, float] = {}
            plan = ScanPlan(self._accounts.model, self._evaluator, self._chunk_size)
            applied = 0
            try:
                await self._accounts.refresh()
                await self._pull(scan.kind)
                plan = ScanPlan(self._accounts.model, self._evaluator, self._chunk_size)
                changes: list[PlannedChange] = []
                for chunk in plan.chunks():
                    changes.extend(chunk)
                    await asyncio.sleep(0)  # a big estate does not stall the pod's RPCs
                phases["evaluate"] = time.perf_counter() - started
                applied = await self._write(scan, changes, lease)
                phases["write"] = time.perf_counter() - started - phases["evaluate"]
                finished = replace(scan, state=ScanState.COMPLETED)
            except Exception as error:
                log.exception("scan failed", extra={"scan_id": scan.scan_id, "kind": scan.kind.value})
                telemetry.failed(span, error)
                finished = replace(scan, state=ScanState.FAILED, error=f"{type(error).__name__}: {error}")
            finished = replace(
                finished, finished_at=self._clock.now(), accounts_evaluated=plan.evaluated, changes=applied
            )
            await self._store.finish(finished)
            seconds = time.perf_counter() - started
            span.set_attributes(
                {
                    "scan.accounts_evaluated": plan.evaluated,
                    "scan.changes": applied,
                    "scan.state": finished.state,
                }
            )
            self._metrics.scan_finished(scan.kind, finished.state, seconds, plan.evaluated, applied)
            log.info(
                "scan finished",
                extra={
                    "scan_id": scan.scan_id,
                    "kind": scan.kind.value,
                    "state": finished.state.value,
                    "accounts_evaluated": plan.evaluated,
                    "changes": applied,
                    "seconds": round(seconds, 3),
                    **{f"{phase}_seconds": round(value, 3) for phase, value in phases.items()},
                },
            )

    async def _pull(self, kind: ScanKind) -> None:
        """Fetch the kind's providers and store the signals that differ from what the model holds.

        A provider that fails fails the scan: tiers are never decided on a partial picture.
        """
        now = self._clock.now()
        model = self._accounts.model
        for provider in self._providers:
            if provider.kind not in PULLS[kind]:
                continue
            try:
                fetched = await provider.fetch(now)
                reported: dict[str, Signal] = {}
                for signal in fetched:
                    value = normalize_signal_value(provider.kind, signal.value)
                    if model.kind_of(signal.account_id) is not None:
                        reported[signal.account_id] = replace(signal, value=value)
            except (ProviderError, ValueError) as error:
                self._metrics.provider_failed(provider.name)
                raise ProviderError(f"signal provider {provider.name}: {error}") from error
            changed = [s for s in reported.values() if model.signal_value(s.account_id, s.kind) != s.value]
            for account_id, held in model.signals.items():
                last = held.get(provider.kind)
                if (
                    last is not None
                    and last.source == provider.name
                    and account_id not in reported
                    and last.value != WITHDRAWN[provider.kind]
                ):
                    changed.append(
                        Signal(account_id, provider.kind, WITHDRAWN[provider.kind], provider.name, now)
                    )
            await self._accounts.store_signals(changed)

    async def _write(self, scan: Scan, changes: list[PlannedChange], lease: Lease) -> int:
        """Write the changes in batches, each checking the fencing token; the model follows."""
        effective_at = scan.started_at or self._clock.now()
        applied_count = 0
        for start in range(0, len(changes), self._write_batch):
            if lease.lost.is_set():
                raise LockLost(f"the {scan.kind.value} scan lock was lost after {applied_count} changes")
            batch = changes[start : start + self._write_batch]
            applied, revision = await self._tiers.apply_changes(
                batch, scan_id=scan.scan_id, effective_at=effective_at, lease=lease
            )
            self._accounts.note_own_write(revision)
            model = self._accounts.model
            for change in applied:
                planned = change.planned
                model.put_tier(
                    planned.account_id,
                    TierRecord(planned.kind, planned.decision, effective_at, change.change_id),
                )
            applied_count += len(applied)
        return applied_count
