"""Workers in every pod claim batches of a run's work items and bill each due occurrence:
invoice (base + usage + proration - credit) -> charge -> transaction, ledger, events."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
import uuid
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from billing_common.clock import Clock
from billing_common.errors import Unavailable
from billing_common.money import Money
from recurring.app.charging import BILLING, Charging, awaiting_result
from recurring.app.ports import (
    Event,
    EventType,
    Invoice,
    OutageCounter,
    Quota,
    Store,
    Transaction,
    Tx,
    WorkItem,
)
from recurring.app.runs import Runs
from recurring.app.subscriptions import cancelled, save_with_history
from recurring.domain import ledger
from recurring.domain.invoicing import Decision, UsageCharge, build_invoice
from recurring.domain.payments import ChargeResult, Outcome, outcome_of
from recurring.domain.runs import ItemStatus
from recurring.domain.schedule import period_starting
from recurring.domain.status import BILLABLE, InvoiceStatus, SubscriptionStatus, invoice_transition
from recurring.domain.subscription import Subscription, renew, skip_occurrence

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkerConfig:
    batch_size: int
    lease: timedelta
    idle_poll: timedelta
    jitter: timedelta
    defer_delay: timedelta
    halt_threshold: int
    minimum_charge_minor: int
    zone: ZoneInfo


class Worker:
    def __init__(
        self,
        store: Store,
        runs: Runs,
        charging: Charging,
        quota: Quota,
        outages: OutageCounter,
        clock: Clock,
        config: WorkerConfig,
    ) -> None:
        self._store = store
        self._runs = runs
        self._charging = charging
        self._quota = quota
        self._outages = outages
        self._clock = clock
        self._config = config

    async def run_forever(self) -> None:
        while True:
            worked = await self.work_once()
            pause = self._config.jitter.total_seconds() * random.random()
            if not worked:
                pause += self._config.idle_poll.total_seconds()
            if pause:
                await asyncio.sleep(pause)

    async def work_once(self) -> int:
        """Claim one batch (FOR UPDATE SKIP LOCKED, with a lease) and work it; how many items."""
        async with self._store.transaction() as tx:
            items = await tx.claim_items(self._config.batch_size, self._config.lease, uuid.uuid4().hex)
        if not items:
            return 0
        await asyncio.gather(*(self._process_safely(item) for item in items))
        for run_id in sorted({item.run_id for item in items}):
            await self._runs.finish_if_done(run_id)
        return len(items)

    async def _process_safely(self, item: WorkItem) -> None:
        try:
            await self.process(item)
        except Exception:
            # The item stays claimed; its lease runs out and a worker takes it up again.
            log.exception("work item failed", extra={"item": item.item_id, "run": item.run_id})

    async def process(self, item: WorkItem) -> None:
        try:
            usage = await self._usage_for(item)
        except Unavailable as exc:
            async with self._store.transaction() as tx:
                if await tx.holds_item(item):
                    await tx.defer_item(item, self._config.defer_delay, f"usage unavailable: {exc.message}")
            return
        prepared = await self._prepare(item, usage)
        if prepared is None:
            return
        txn, sub = prepared
        result = await self._charging.send(txn, sub)
        await self._conclude(item, txn, result)

    async def _usage_for(self, item: WorkItem) -> list[UsageCharge]:
        """Usage of the period that ends on the due date (billed in arrears), for plan subscriptions."""
        async with self._store.transaction() as tx:
            sub = await tx.load_subscription(item.subscription_id)
            invoiced = await tx.invoice_for_occurrence(item.occurrence_key)
        if (
            sub is None
            or invoiced is not None
            or not sub.plan_code
            or sub.status not in BILLABLE
            or sub.next_billing_date != item.due_date
            or sub.current_period_start >= item.due_date
        ):
            return []
        return await self._quota.usage(
            sub.account_id, self._midnight(sub.current_period_start), self._midnight(item.due_date)
        )

    def _midnight(self, day: date) -> datetime:
        return datetime.combine(day, time(0), self._config.zone).astimezone(UTC)

    async def _prepare(
        self, item: WorkItem, usage: list[UsageCharge]
    ) -> tuple[Transaction, Subscription] | None:
        """Invoice the occurrence (once) and write the attempt to send; None when nothing is to charge."""
        async with self._store.transaction() as tx:
            if not await tx.holds_item(item):
                return None
            sub = await tx.load_subscription(item.subscription_id, lock=True)
            assert sub is not None
            invoice = await tx.invoice_for_occurrence(item.occurrence_key)
            if invoice is None:
                reason = await self._pass_if_not_billed(tx, sub, item)
                if reason:
                    await tx.finish_item(item, ItemStatus.SKIPPED, reason)
                    return None
                invoice = await self._open_invoice(tx, sub, item, usage)
                if invoice is None:
                    now = self._clock.now()
                    await save_with_history(tx, sub, skip_occurrence(sub, item.due_date, now), BILLING, now)
                    await tx.finish_item(item, ItemStatus.SKIPPED, "below the minimum amount")
                    return None
            if invoice.status is InvoiceStatus.PAID:
                await tx.finish_item(item, ItemStatus.CHARGED, "paid", invoice.invoice_id)
                return None
            if invoice.status is not InvoiceStatus.OPEN:
                await tx.finish_item(item, ItemStatus.FAILED, invoice.status.value, invoice.invoice_id)
                return None
            attempts = await tx.transactions(invoice.invoice_id)
            last = attempts[-1] if attempts else None
            if last is not None and not last.answered:
                return last, sub
            if last is not None and awaiting_result(last):
                await tx.finish_item(
                    item, ItemStatus.CHARGED, "awaiting the final outcome", invoice.invoice_id
                )
                return None
            return await self._charging.new_attempt(tx, invoice), sub

    async def _pass_if_not_billed(self, tx: Tx, sub: Subscription, item: WorkItem) -> str:
        """Why this occurrence is not billed (moving the subscription past it), or "" to bill it."""
        now = self._clock.now()
        if sub.next_billing_date != item.due_date:
            return "no longer due on this date"
        if sub.cancel_at_period_end:
            ended = cancelled(sub, now)
            await save_with_history(tx, sub, ended, BILLING, now)
            await tx.emit(
                Event(EventType.SUBSCRIPTION_CANCELLED, subscription=ended, extra={"at_period_end": True})
            )
            return "cancelled at the end of its period"
        if sub.status in (SubscriptionStatus.PAUSED, SubscriptionStatus.SUSPENDED):
            await save_with_history(tx, sub, skip_occurrence(sub, item.due_date, now), BILLING, now)
            return str(sub.status.value)
        if sub.status not in BILLABLE:
            return str(sub.status.value)
        return ""

    async def _open_invoice(
        self, tx: Tx, sub: Subscription, item: WorkItem, usage: list[UsageCharge]
    ) -> Invoice | None:
        now = self._clock.now()
        currency = sub.amount.currency
        prorations = await tx.open_prorations(sub.subscription_id)
        _, credit = await tx.balances(sub.account_id, currency)
        draft = build_invoice(
            sub.amount,
            f"{sub.plan_code or 'Subscription'} ({sub.frequency.value})",
            [u for u in usage if u.amount.currency == currency],
            [(text, amount) for _, text, amount in prorations],
            credit,
            Money(self._config.minimum_charge_minor, currency),
        )
        if draft.decision is Decision.BELOW_MINIMUM:
            return None
        period = period_starting(sub.frequency, item.due_date, sub.anchor_day)
        invoice = Invoice(
            invoice_id=f"inv_{uuid.uuid4().hex}",
            subscription_id=sub.subscription_id,
            account_id=sub.account_id,
            merchant_id=sub.merchant_id,
            occurrence_key=item.occurrence_key,
            status=invoice_transition(InvoiceStatus.DRAFT, InvoiceStatus.OPEN),
            billing_date=item.due_date,
            period_start=period.start,
            period_end=period.end,
            total=draft.total,
            credit_applied=draft.credit_applied,
            amount_due=draft.amount_due,
            created_at=now,
            lines=draft.lines,
        )
        await tx.insert_invoice(invoice)
        await tx.attach_prorations([pid for pid, _, _ in prorations], invoice.invoice_id)
        if draft.total.amount_minor or draft.credit_applied.amount_minor:
            await tx.post(
                ledger.invoice_posting(sub.account_id, invoice.invoice_id, draft.total, draft.credit_applied),
                now,
            )
        renewed = renew(sub, item.due_date, now)
        await save_with_history(tx, sub, renewed, BILLING, now)
        await tx.emit(Event(EventType.SUBSCRIPTION_RENEWED, subscription=renewed))
        await tx.emit(Event(EventType.INVOICE_CREATED, invoice=invoice))
        if draft.decision is Decision.PAID_BY_CREDIT:
            await self._charging.mark_paid(tx, invoice, None, BILLING)
            return dataclasses.replace(invoice, status=InvoiceStatus.PAID, paid_at=now)
        return invoice

    async def _conclude(self, item: WorkItem, txn: Transaction, result: ChargeResult | None) -> None:
        if result is None:
            async with self._store.transaction() as tx:
                if await tx.holds_item(item):
                    await tx.defer_item(
                        item,
                        self._config.defer_delay,
                        "the payment service did not answer; same key next time",
                    )
            return
        async with self._store.transaction() as tx:
            holds = await tx.holds_item(item)
            outcome = await self._charging.record(tx, txn, result) or outcome_of(result)
            if holds:
                if outcome is Outcome.DEFERRED:
                    await tx.defer_item(item, self._config.defer_delay, "gateway unreachable")
                else:
                    status = ItemStatus.FAILED if outcome is Outcome.FAILED else ItemStatus.CHARGED
                    detail = result.decline_code if outcome is Outcome.FAILED else outcome.value
                    await tx.finish_item(item, status, detail, txn.invoice_id)
        gateway = item.gateway
        if outcome is not Outcome.DEFERRED:
            await self._outages.reachable(item.run_id, gateway)
            return
        if await self._outages.unreachable(item.run_id, gateway) < self._config.halt_threshold:
            return
        async with self._store.transaction() as tx:
            if await tx.halt_gateway(item.run_id, gateway):
                run = await tx.get_run(item.run_id)
                assert run is not None
                deferred = await tx.deferred_items(item.run_id, gateway)
                await tx.emit(
                    Event(EventType.RUN_HALTED, run=run, extra={"gateway": gateway, "deferred": deferred})
                )
                log.warning("gateway halted in run", extra={"run": item.run_id, "gateway": gateway})
