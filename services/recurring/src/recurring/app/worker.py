"""Workers in every pod claim batches of a run's work items and bill each due occurrence:
invoice (base + usage + proration - credit) -> charge -> transaction, ledger, events."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from zoneinfo import ZoneInfo

from billing_common.clock import Clock
from recurring.app.ports import ChargeTraces, Gateway, OutageCounter, Quota, RecurringMetrics, Store
from recurring.app.runs import Runs
from recurring.app.settling import apply, books_for_invoices, books_for_items, new_id
from recurring.domain import events as ev
from recurring.domain import usage
from recurring.domain.invoicing import Invoice
from recurring.domain.outages import halts, outage_steps
from recurring.domain.payments import ChargeResult, NoAnswer, Outcome, tally
from recurring.domain.runs import AfterFailure, WorkItem
from recurring.domain.settlement import (
    BILLING,
    Answer,
    Books,
    Change,
    Charge,
    Rules,
    bill,
    charge_request,
    failure_of,
    settle,
)
from recurring.domain.subscription import Subscription
from recurring.domain.usage import Usages

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkerConfig:
    batch_size: int
    lease: timedelta
    rules: Rules
    zone: ZoneInfo


@dataclass
class Worked:
    """What became of a batch: how many charges ended each way, and why the batch failed as a whole
    when it did (its items then went one by one)."""

    outcomes: Counter[str]
    failure: Exception | None = None


class Worker:
    def __init__(
        self,
        store: Store,
        runs: Runs,
        gateway: Gateway,
        quota: Quota,
        outages: OutageCounter,
        clock: Clock,
        config: WorkerConfig,
        metrics: RecurringMetrics,
        traces: ChargeTraces,
    ) -> None:
        self._store = store
        self._runs = runs
        self._gateway = gateway
        self._quota = quota
        self._outages = outages
        self._clock = clock
        self._config = config
        self._metrics = metrics
        self._traces = traces
        # Every claim token of this worker starts with it: what the worker still holds when it
        # stops is handed back by it.
        self._pod = uuid.uuid4().hex

    async def release(self) -> int:
        """Hand back the items this worker still holds (it stops); how many."""
        async with self._store.transaction() as uow:
            return await uow.items.release(self._pod)

    async def claim(self) -> list[WorkItem]:
        """One batch of due items (FOR UPDATE SKIP LOCKED, with a lease), under a new claim token."""
        async with self._store.transaction() as uow:
            token = f"{self._pod}.{uuid.uuid4().hex}"
            return await uow.items.claim(self._config.batch_size, self._config.lease, token)

    async def work(self, items: list[WorkItem]) -> Worked:
        """Bill and charge a claimed batch; a batch that fails as a whole goes item by item."""
        worked = Worked(Counter())
        try:
            charges = await self._bill(items)
        except Exception as error:
            log.exception("batch failed; its items go one by one", extra={"items": len(items)})
            worked.failure = error
            for alone in await asyncio.gather(*(self._bill_alone(item) for item in items)):
                worked.outcomes.update(alone)
        else:
            worked.outcomes = await self._charge_all(charges)
        for run_id in sorted({item.run_id for item in items}):
            await self._runs.finish_if_done(run_id)
        return worked

    async def _bill_alone(self, item: WorkItem) -> Counter[str]:
        """One item on its own: the path a batch falls back to when it fails as a whole."""
        try:
            charges = await self._bill([item])
        except Exception as error:
            log.exception("work item failed", extra={"item": item.item_id, "run": item.run_id})
            await self._fail("preparing", [(item, error)])
            return Counter()
        return await self._charge_all(charges)

    async def _fail(self, step: str, failures: Sequence[tuple[WorkItem, BaseException]]) -> None:
        """Count a failure of ours per item: at the limit the item is parked, else tried again later.
        If even this cannot be written, the claim's lease runs out and the next claim counts it."""
        if not failures:
            return
        rules = self._config.rules
        counted = [failure_of(item, f"{step}: {type(e).__name__}: {e}", rules) for item, e in failures]
        try:
            async with self._store.transaction() as uow:
                self._parked(await apply(uow, Change(failures=counted), self._clock.now()), counted)
        except Exception:
            log.exception("recording failed items failed", extra={"items": len(failures)})

    def _parked(
        self, parked: Sequence[WorkItem], failures: Sequence[tuple[WorkItem, AfterFailure, str]]
    ) -> None:
        """Report the items parked, with why: operators resume them (ResumeRun) once the cause is fixed."""
        reasons = {item.item_id: reason for item, _, reason in failures}
        for item in parked:
            self._metrics.item_parked(item, reasons[item.item_id])

    async def _bill(self, items: list[WorkItem]) -> list[Charge]:
        """Invoice the items' occurrences and write their attempts in one transaction; the charges
        to send. Items whose usage quota could not give wait (or count a failure of ours)."""
        async with self._store.transaction() as uow:
            subs = await uow.subscriptions.load(sorted({item.subscription_id for item in items}))
            invoiced = await uow.invoices.for_occurrences([item.occurrence_key for item in items])
        usages = await self._usages(items, subs, invoiced)
        now = self._clock.now()
        async with self._store.transaction() as uow:
            held = await uow.items.held(items)
            billable = [item for item in items if item.item_id in held]
            books = await books_for_items(uow, billable)
            change = bill(billable, usages, books, self._config.rules, now, new_id)
            self._parked(await apply(uow, change, now), change.failures)
        return change.charges

    async def _usages(
        self, items: list[WorkItem], subs: dict[str, Subscription], invoiced: dict[str, Invoice]
    ) -> Usages:
        """Usage and add-ons of the period that ends on each due date (billed in arrears), for plan
        subscriptions, in one call for the batch."""
        asked = usage.periods_to_ask(items, subs, invoiced, self._config.zone)
        answers = await self._quota.usages([period for _, period in asked]) if asked else []
        return usage.sort_answers([item for item, _ in asked], answers, self._config.rules.defer_delay)

    async def _charge_all(self, charges: list[Charge]) -> Counter[str]:
        """Send the batch's charges in one call (gateway-adapter paces them) and record the answers
        in one transaction. Returns how many charges ended in each outcome."""
        if not charges:
            return Counter()
        try:
            results = await self._gateway.charge_batch(
                [charge_request(c.attempt, c.subscription) for c in charges]
            )
        except Exception as error:
            log.exception("charging failed", extra={"items": len(charges)})
            await self._fail("charging", [(charge.item, error) for charge in charges])
            return Counter(errors=len(charges))
        answered = sorted(zip(charges, results, strict=True), key=lambda a: a[0].item.item_id)
        traces = {charge.item.item_id: self._traces.answered(charge, result) for charge, result in answered}
        try:
            recorded = await self._conclude(answered, traces)
        except Exception:
            # The items stay claimed; their lease runs out and the next claim sends the same keys.
            log.exception("recording charge results failed", extra={"items": len(answered)})
            return Counter(errors=len(answered))
        return tally([outcome for _, outcome in recorded], [result for _, result in answered])

    async def _conclude(
        self,
        answered: list[tuple[Charge, ChargeResult | NoAnswer]],
        traces: Mapping[int, Mapping[str, str]],
    ) -> list[tuple[WorkItem, Outcome]]:
        """Settle the answers in one transaction; an item whose lease was taken over keeps its new
        owner. What a charge's answer announces is written under the charge's trace."""
        now = self._clock.now()
        async with self._store.transaction() as uow:
            held = await uow.items.held([c.item for c, _ in answered])
            recorded = [c.attempt.invoice_id for c, r in answered if isinstance(r, ChargeResult)]
            books = await books_for_invoices(uow, recorded) if recorded else Books({}, {}, {})
            answers = [Answer(c.attempt, r, c.item, c.item.item_id in held) for c, r in answered]
            change = settle(answers, books, self._config.rules, BILLING, now)
            self._parked(await apply(uow, change, now, traces), change.failures)
        await self._count_outages(change.outcomes)
        return change.outcomes

    async def _count_outages(self, outcomes: list[tuple[WorkItem, Outcome]]) -> None:
        """Count unreachable answers in a row per run and the gateway each answer names; halt the
        gateway's part of the run at the threshold."""
        for step in outage_steps(outcomes):
            if step.reachable:
                await self._outages.reachable(step.run_id, step.gateway)
            elif halts(await self._outages.unreachable(step.run_id, step.gateway), self._config.rules):
                await self._halt(step.run_id, step.gateway)

    async def _halt(self, run_id: str, gateway: str) -> None:
        async with self._store.transaction() as uow:
            if await uow.runs.halt(run_id, gateway):
                run = (await uow.runs.load([run_id]))[run_id]
                deferred = await uow.runs.deferred_items(run_id, gateway)
                await uow.outbox.add([ev.RunHalted(run, gateway, deferred)])
                log.warning("gateway halted in run", extra={"run": run_id, "gateway": gateway})
