"""Workers in every pod claim batches of a run's work items and bill each due occurrence:
invoice (base + usage + proration - credit) -> charge -> transaction, ledger, events."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
import uuid
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from time import perf_counter
from zoneinfo import ZoneInfo

from billing_common import telemetry
from billing_common.clock import Clock
from billing_common.errors import Unavailable
from billing_common.money import Money
from recurring.app.charging import BILLING, Charging, answered_attempt, awaiting_result, quiet_after_payment
from recurring.app.ports import (
    Event,
    EventType,
    HistoryEntry,
    Invoice,
    ItemResult,
    OutageCounter,
    Quota,
    Store,
    Transaction,
    Tx,
    WorkItem,
)
from recurring.app.runs import Runs
from recurring.app.subscriptions import cancelled, history_entry, save_with_history
from recurring.domain import ledger
from recurring.domain.invoicing import Decision, InvoiceDraft, UsageCharge, build_invoice
from recurring.domain.payments import REASON_LENGTH, ChargeResult, NoAnswer, Outcome, outcome_of
from recurring.domain.runs import ItemStatus, after_failure
from recurring.domain.schedule import period_starting
from recurring.domain.status import BILLABLE, InvoiceStatus, SubscriptionStatus, invoice_transition
from recurring.domain.subscription import Subscription, renew, skip_occurrence

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkerConfig:
    batch_size: int
    concurrent_batches: int
    lease: timedelta
    idle_poll: timedelta
    jitter: timedelta
    defer_delay: timedelta
    halt_threshold: int
    max_failures: int
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
        """A few batch loops at once, so one batch is invoiced while another one's charges are out."""
        await asyncio.gather(*(self._work_forever() for _ in range(self._config.concurrent_batches)))

    async def _work_forever(self) -> None:
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
        run_ids = sorted({item.run_id for item in items})
        # The batch continues the trace of the run that queued its items (linked to any other's).
        contexts = list(
            {str(item.trace_context.get("traceparent")): item.trace_context for item in items}.values()
        )
        contexts.sort(key=lambda stored: not stored)
        started = perf_counter()
        outcomes: Counter[str] = Counter()
        with telemetry.span(
            "recurring.batch",
            parent=contexts[0],
            links=contexts[1:],
            attributes={"batch.items": len(items), "run.ids": run_ids},
        ) as span:
            working = await self._park_worn_out(items)
            if working:
                try:
                    charges = await self._prepare_batch(working)
                except Exception as error:
                    log.exception("batch failed; its items go one by one", extra={"items": len(working)})
                    telemetry.failed(span, error)
                    await asyncio.gather(*(self._process_safely(item) for item in working))
                else:
                    outcomes = await self._charge_all(charges)
            for run_id in run_ids:
                await self._runs.finish_if_done(run_id)
            span.set_attributes({f"batch.{outcome}": count for outcome, count in outcomes.items()})
            log.info(
                "batch worked",
                extra={
                    "run_ids": run_ids,
                    "items": len(items),
                    "charges": sum(outcomes.values()),
                    **outcomes,
                    "seconds": round(perf_counter() - started, 3),
                },
            )
        return len(items)

    async def _process_safely(self, item: WorkItem) -> None:
        try:
            await self.process(item)
        except Exception as error:
            log.exception("work item failed", extra={"item": item.item_id, "run": item.run_id})
            await self._fail([(item, _reason("preparing", error))])

    async def _park_worn_out(self, items: list[WorkItem]) -> list[WorkItem]:
        """Park the items whose tries ran out without an outcome (a worker that stopped holding one
        counts at the claim); the others are worked."""
        worn_out = [
            (item, after)
            for item in items
            if item.failures
            and (
                after := after_failure(item.failures, self._config.max_failures, self._config.defer_delay)
            ).park
        ]
        if not worn_out:
            return items
        async with self._store.transaction() as tx:
            for item, after in worn_out:
                last = item.detail or "its worker stopped holding it"
                reason = f"{item.failures} tries ended without an outcome; last: {last}"
                if await tx.record_failure(item, after, reason[:REASON_LENGTH]):
                    _log_parked(item, reason)
        parked = {item.item_id for item, _ in worn_out}
        return [item for item in items if item.item_id not in parked]

    async def _fail(self, failures: Sequence[tuple[WorkItem, str]]) -> None:
        """Count a failure of ours per item: at the limit the item is parked, else tried again later.
        If even this cannot be written, the claim's lease runs out and the next claim counts it."""
        if not failures:
            return
        try:
            async with self._store.transaction() as tx:
                for item, reason in failures:
                    await self._record_failure(tx, item, reason)
        except Exception:
            log.exception("recording failed items failed", extra={"items": len(failures)})

    async def _record_failure(self, tx: Tx, item: WorkItem, reason: str) -> None:
        after = after_failure(item.failures + 1, self._config.max_failures, self._config.defer_delay)
        if await tx.record_failure(item, after, reason[:REASON_LENGTH]) and after.park:
            _log_parked(item, reason)

    async def process(self, item: WorkItem) -> None:
        """One item on its own: the path a batch falls back to when it fails as a whole."""
        try:
            usage = await self._usage_for(item)
        except Unavailable as exc:
            async with self._store.transaction() as tx:
                if await tx.holds_item(item):
                    await tx.defer_item(item, self._config.defer_delay, f"usage unavailable: {exc.message}")
            return
        async with self._store.transaction() as tx:
            if not await tx.holds_item(item):
                return
            prepared = await self._prepare(tx, item, usage)
        if prepared is None:
            return
        charge = _Charge(item, *prepared)
        result, context = await self._send(charge)
        await self._conclude([(charge, result)], {item.item_id: context})

    async def _send(self, charge: _Charge) -> tuple[ChargeResult | NoAnswer, telemetry.TraceContext]:
        """Send one charge in a span of its own (under the trace that wrote the attempt, when an
        earlier worker did); its answer and the trace to record it in."""
        txn = charge.txn
        attributes = {
            "run.id": charge.item.run_id,
            "invoice.id": txn.invoice_id,
            "charge.attempt": txn.attempt,
            "charge.idempotency_key": txn.idempotency_key,
        }
        earlier = txn.trace_context or None
        links = [telemetry.capture()] if earlier else []
        with telemetry.span("recurring.charge", parent=earlier, links=links, attributes=attributes) as span:
            result = await self._charging.send(txn, charge.sub)
            answered = isinstance(result, ChargeResult)
            outcome = outcome_of(result).value if isinstance(result, ChargeResult) else "no_answer"
            facts: dict[str, str | int] = {
                "invoice_id": txn.invoice_id,
                "attempt": txn.attempt,
                "outcome": outcome,
                "gateway": result.gateway if isinstance(result, ChargeResult) else "",
                "decline_code": result.decline_code if isinstance(result, ChargeResult) else result.code,
            }
            span.set_attributes(
                {f"charge.{key}": value for key, value in facts.items() if key != "invoice_id"}
            )
            log.log(
                logging.DEBUG if outcome == Outcome.PAID.value else logging.INFO,
                "charge answered" if answered else "charge got no answer",
                extra=facts,
            )
            return result, telemetry.capture()

    async def _prepare_batch(self, items: list[WorkItem]) -> list[_Charge]:
        """Invoice the batch's occurrences and write their attempts, a few statements per round.

        A round holds at most one item per account, so the credit each invoice applies is read once.
        """
        async with self._store.transaction() as tx:
            subs = await tx.load_subscriptions(sorted({item.subscription_id for item in items}))
            invoiced = await tx.invoices_for_occurrences([item.occurrence_key for item in items])
        usage, unavailable, failed = await self._usages(items, subs, invoiced)
        if unavailable:
            async with self._store.transaction() as tx:
                held = await tx.held_items(list(unavailable))
                for item, reason in unavailable.items():
                    if item.item_id in held:
                        await tx.defer_item(item, self._config.defer_delay, f"usage unavailable: {reason}")
        await self._fail(list(failed.items()))
        charges: list[_Charge] = []
        for round_items in _rounds_by_account([i for i in items if i.item_id in usage], subs):
            charges += await self._prepare_round(round_items, usage)
        return charges

    async def _usages(
        self, items: list[WorkItem], subs: dict[str, Subscription], invoiced: dict[str, Invoice]
    ) -> tuple[dict[int, list[UsageCharge]], dict[WorkItem, str], dict[WorkItem, str]]:
        """Usage of the period that ends on each due date (billed in arrears), for plan subscriptions;
        the items whose usage quota could not give (it did not answer), and those whose usage failed."""
        usage: dict[int, list[UsageCharge]] = {item.item_id: [] for item in items}
        metered = [
            (item, sub)
            for item in items
            if (sub := subs.get(item.subscription_id)) is not None
            and item.occurrence_key not in invoiced
            and _usage_billed(sub, item)
        ]
        answers = await asyncio.gather(
            *(
                self._quota.usage(
                    sub.account_id, self._midnight(sub.current_period_start), self._midnight(item.due_date)
                )
                for item, sub in metered
            ),
            return_exceptions=True,
        )
        unavailable: dict[WorkItem, str] = {}
        failed: dict[WorkItem, str] = {}
        for (item, _), answer in zip(metered, answers, strict=True):
            if isinstance(answer, Unavailable):
                unavailable[item] = answer.message
                del usage[item.item_id]
            elif isinstance(answer, Exception):
                log.error("usage failed", exc_info=answer, extra={"item": item.item_id})
                failed[item] = _reason("usage", answer)
                del usage[item.item_id]
            elif isinstance(answer, BaseException):
                raise answer
            else:
                usage[item.item_id] = answer
        return usage, unavailable, failed

    async def _prepare_round(
        self, items: list[WorkItem], usage: dict[int, list[UsageCharge]]
    ) -> list[_Charge]:
        now = self._clock.now()
        writes = _Writes()
        charges: list[_Charge] = []
        async with self._store.transaction() as tx:
            held = await tx.held_items(items)
            items = [item for item in items if item.item_id in held]
            subs = await tx.load_subscriptions(sorted({item.subscription_id for item in items}), lock=True)
            invoiced = await tx.invoices_for_occurrences([item.occurrence_key for item in items])
            renewing = {
                item.item_id: item
                for item in items
                if item.occurrence_key not in invoiced and _plain_renewal(subs[item.subscription_id], item)
            }
            renewing_subs = sorted({item.subscription_id for item in renewing.values()})
            prorations = await tx.prorations_of(renewing_subs) if renewing else {}
            credits = (
                await tx.credits(sorted({_credit_key(subs[s]) for s in renewing_subs})) if renewing else {}
            )
            for item in items:
                sub = subs[item.subscription_id]
                if item.item_id in renewing:
                    open_prorations = prorations.get(sub.subscription_id, [])
                    draft, invoice = self._new_invoice(
                        sub, item, usage[item.item_id], open_prorations, credits[_credit_key(sub)]
                    )
                    if draft.decision is Decision.CHARGE:
                        txn = self._charging.attempt(invoice, 1)
                        renewed = writes.renewal(
                            sub, item, invoice, draft, [p for p, _, _ in open_prorations], now
                        )
                        writes.transactions.append(txn)
                        charges.append(_Charge(item, txn, renewed))
                        continue
                prepared = await self._prepare(tx, item, usage[item.item_id])
                if prepared is not None:
                    charges.append(_Charge(item, *prepared))
            await writes.write(tx, now)
        return charges

    async def _usage_for(self, item: WorkItem) -> list[UsageCharge]:
        async with self._store.transaction() as tx:
            sub = await tx.load_subscription(item.subscription_id)
            invoiced = await tx.invoice_for_occurrence(item.occurrence_key)
        if sub is None or invoiced is not None or not _usage_billed(sub, item):
            return []
        return await self._quota.usage(
            sub.account_id, self._midnight(sub.current_period_start), self._midnight(item.due_date)
        )

    def _midnight(self, day: date) -> datetime:
        return datetime.combine(day, time(0), self._config.zone).astimezone(UTC)

    async def _prepare(
        self, tx: Tx, item: WorkItem, usage: list[UsageCharge]
    ) -> tuple[Transaction, Subscription] | None:
        """Invoice the held occurrence (once) and write the attempt to send; None: nothing to charge."""
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
            await tx.finish_item(item, ItemStatus.CHARGED, "awaiting the final outcome", invoice.invoice_id)
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
        prorations = await tx.open_prorations(sub.subscription_id)
        _, credit = await tx.balances(sub.account_id, sub.amount.currency)
        draft, invoice = self._new_invoice(sub, item, usage, prorations, credit)
        if draft.decision is Decision.BELOW_MINIMUM:
            return None
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

    def _new_invoice(
        self,
        sub: Subscription,
        item: WorkItem,
        usage: list[UsageCharge],
        prorations: list[tuple[int, str, Money]],
        credit: Money,
    ) -> tuple[InvoiceDraft, Invoice]:
        """The occurrence's open invoice: base + usage + proration - credit (not written)."""
        currency = sub.amount.currency
        draft = build_invoice(
            sub.amount,
            f"{sub.plan_code or 'Subscription'} ({sub.frequency.value})",
            [u for u in usage if u.amount.currency == currency],
            [(text, amount) for _, text, amount in prorations],
            credit,
            Money(self._config.minimum_charge_minor, currency),
        )
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
            created_at=self._clock.now(),
            lines=draft.lines,
        )
        return draft, invoice

    async def _charge_all(self, charges: list[_Charge]) -> Counter[str]:
        """Send every charge at once (the pacer and the in-flight bound hold them back) and record the
        answers in group commits: whatever arrived while the previous group was being written.
        Returns how many charges ended in each outcome."""
        sending = {asyncio.ensure_future(self._send(c)): c for c in charges}
        outcomes: Counter[str] = Counter()
        while sending:
            done, _ = await asyncio.wait(sending, return_when=asyncio.FIRST_COMPLETED)
            answered: list[tuple[_Charge, ChargeResult | NoAnswer]] = []
            contexts: dict[int, telemetry.TraceContext] = {}
            broken: list[tuple[WorkItem, str]] = []
            for task in done:
                charge = sending.pop(task)
                error = task.exception()
                if error is None:
                    result, contexts[charge.item.item_id] = task.result()
                    answered.append((charge, result))
                else:
                    log.error("charge failed", exc_info=error, extra={"item": charge.item.item_id})
                    broken.append((charge.item, _reason("charging", error)))
                    outcomes["errors"] += 1
            await self._fail(broken)
            try:
                recorded = await self._conclude(sorted(answered, key=lambda a: a[0].item.item_id), contexts)
                outcomes.update(outcome.value for _, outcome in recorded)
                unanswered = sum(1 for _, result in answered if isinstance(result, NoAnswer))
                if unanswered:
                    outcomes["no_answer"] += unanswered
            except Exception:
                # The items stay claimed; their lease runs out and the next claim sends the same keys.
                log.exception("recording charge results failed", extra={"items": len(answered)})
                outcomes["errors"] += len(answered)
        return outcomes

    async def _conclude(
        self,
        answered: list[tuple[_Charge, ChargeResult | NoAnswer]],
        contexts: Mapping[int, telemetry.TraceContext],
    ) -> list[tuple[WorkItem, Outcome]]:
        """Record the answers in one transaction; an item whose lease was taken over keeps its new owner.
        What a charge's answer announces (a failed payment) is written under the charge's trace."""
        now = self._clock.now()
        outcomes: list[tuple[WorkItem, Outcome]] = []
        async with self._store.transaction() as tx:
            held = await tx.held_items([c.item for c, _ in answered])
            recorded = [(c, r) for c, r in answered if isinstance(r, ChargeResult)]
            invoice_ids = [c.txn.invoice_id for c, _ in recorded]
            invoices = await tx.load_invoices(invoice_ids) if recorded else {}
            attempts = await tx.transactions_of(invoice_ids) if recorded else {}
            subs = (
                await tx.load_subscriptions(sorted({i.subscription_id for i in invoices.values()}), lock=True)
                if recorded
                else {}
            )
            quiet = {sid for sid, sub in subs.items() if quiet_after_payment(sub)}
            writes = _Writes()
            for charge, result in answered:
                item, txn = charge.item, charge.txn
                holds = item.item_id in held
                if isinstance(result, NoAnswer):
                    # Our pod, database or network failed before the gateway answered, or the
                    # payment service is down: the same key goes again, never the customer's failure.
                    if holds and result.ours:
                        await self._record_failure(tx, item, result.reason)
                    elif holds:
                        await tx.defer_item(item, self._config.defer_delay, result.reason)
                    continue
                outcome = outcome_of(result)
                invoice = invoices[txn.invoice_id]
                current = next(t for t in attempts[txn.invoice_id] if t.transaction_id == txn.transaction_id)
                if current.answered:
                    pass  # another worker recorded this attempt
                elif (
                    outcome is Outcome.PAID
                    and invoice.status is InvoiceStatus.OPEN
                    and invoice.subscription_id in quiet
                ):
                    writes.payment(invoice, answered_attempt(current, result), now)
                else:
                    with telemetry.within(contexts.get(item.item_id, {})):
                        outcome = await self._charging.record(tx, txn, result) or outcome
                if holds:
                    if outcome is Outcome.DEFERRED:
                        await tx.defer_item(item, self._config.defer_delay, "gateway unreachable")
                    else:
                        status = ItemStatus.FAILED if outcome is Outcome.FAILED else ItemStatus.CHARGED
                        failure = result.reason or result.decline_code
                        detail = failure if outcome is Outcome.FAILED else outcome.value
                        writes.finished.append(ItemResult(item, status, detail, txn.invoice_id))
                outcomes.append((item, outcome))
            await writes.write(tx, now)
        await self._count_outages(outcomes)
        return outcomes

    async def _count_outages(self, outcomes: list[tuple[WorkItem, Outcome]]) -> None:
        """Consecutive unreachable results per run and gateway; a run of answers resets the count once."""
        reset: set[tuple[str, str]] = set()
        for item, outcome in outcomes:
            key = (item.run_id, item.gateway)
            if outcome is not Outcome.DEFERRED:
                if key not in reset:
                    await self._outages.reachable(*key)
                    reset.add(key)
                continue
            reset.discard(key)
            if await self._outages.unreachable(*key) >= self._config.halt_threshold:
                await self._halt(*key)

    async def _halt(self, run_id: str, gateway: str) -> None:
        async with self._store.transaction() as tx:
            if await tx.halt_gateway(run_id, gateway):
                run = await tx.get_run(run_id)
                assert run is not None
                deferred = await tx.deferred_items(run_id, gateway)
                await tx.emit(
                    Event(EventType.RUN_HALTED, run=run, extra={"gateway": gateway, "deferred": deferred})
                )
                log.warning("gateway halted in run", extra={"run": run_id, "gateway": gateway})


@dataclass(frozen=True)
class _Charge:
    """An attempt written and ready to send, with the subscription whose payment method it uses."""

    item: WorkItem
    txn: Transaction
    sub: Subscription


class _Writes:
    """The common path's writes of a batch, gathered to go out as a few statements before commit."""

    def __init__(self) -> None:
        self.invoices: list[Invoice] = []
        self.prorations: dict[str, Sequence[int]] = {}
        self.postings: list[ledger.Posting] = []
        self.subscriptions: list[Subscription] = []
        self.history: list[HistoryEntry] = []
        self.events: list[Event] = []
        self.transactions: list[Transaction] = []
        self.answered: list[Transaction] = []
        self.paid: list[str] = []
        self.finished: list[ItemResult] = []

    def renewal(
        self,
        sub: Subscription,
        item: WorkItem,
        invoice: Invoice,
        draft: InvoiceDraft,
        proration_ids: Sequence[int],
        now: datetime,
    ) -> Subscription:
        """The occurrence is invoiced and the subscription renewed (as `Worker._open_invoice` does)."""
        self.invoices.append(invoice)
        self.prorations[invoice.invoice_id] = proration_ids
        if draft.total.amount_minor or draft.credit_applied.amount_minor:
            self.postings.append(
                ledger.invoice_posting(sub.account_id, invoice.invoice_id, draft.total, draft.credit_applied)
            )
        renewed = renew(sub, item.due_date, now)
        entry = history_entry(sub, renewed, BILLING, now)
        if entry is not None:
            self.subscriptions.append(renewed)
            self.history.append(entry)
        self.events.append(Event(EventType.SUBSCRIPTION_RENEWED, subscription=renewed))
        self.events.append(Event(EventType.INVOICE_CREATED, invoice=invoice))
        return renewed

    def payment(self, invoice: Invoice, txn: Transaction, now: datetime) -> None:
        """A successful charge of an open invoice whose subscription a payment leaves as it is
        (as `Charging.record` and `Charging.mark_paid` do)."""
        invoice_transition(invoice.status, InvoiceStatus.PAID)
        self.answered.append(txn)
        self.paid.append(invoice.invoice_id)
        if txn.amount.amount_minor:
            self.postings.append(
                ledger.payment_posting(
                    invoice.account_id, txn.transaction_id, txn.gateway or "unknown", txn.amount
                )
            )
        paid = dataclasses.replace(invoice, status=InvoiceStatus.PAID, paid_at=now)
        self.events.append(Event(EventType.INVOICE_PAID, invoice=paid, transaction=txn))

    async def write(self, tx: Tx, now: datetime) -> None:
        if self.invoices:
            await tx.insert_invoices(self.invoices)
            await tx.attach_prorations_to(self.prorations)
        if self.transactions:
            await tx.insert_transactions(self.transactions)
        if self.answered:
            await tx.save_transactions(self.answered)
            await tx.set_invoice_statuses(self.paid, InvoiceStatus.PAID, paid_at=now)
        await tx.post_all(self.postings, now)
        if self.subscriptions:
            await tx.save_subscriptions(self.subscriptions)
            await tx.add_histories(self.history)
        if self.finished:
            await tx.finish_items(self.finished)
        await tx.emit_all(self.events)


def _rounds_by_account(items: list[WorkItem], subs: dict[str, Subscription]) -> list[list[WorkItem]]:
    """The items in rounds with at most one item per account each, in claim order."""
    rounds: list[list[WorkItem]] = []
    seen: dict[str, int] = {}
    for item in items:
        sub = subs.get(item.subscription_id)
        account = sub.account_id if sub is not None else item.subscription_id
        index = seen.get(account, 0)
        seen[account] = index + 1
        if index == len(rounds):
            rounds.append([])
        rounds[index].append(item)
    return rounds


def _plain_renewal(sub: Subscription, item: WorkItem) -> bool:
    """The occurrence is billed as usual: due on this date, billable, not ending at period end."""
    return sub.next_billing_date == item.due_date and sub.status in BILLABLE and not sub.cancel_at_period_end


def _usage_billed(sub: Subscription, item: WorkItem) -> bool:
    """A plan subscription's occurrence that will be invoiced, with a period behind it to bill usage of."""
    return (
        bool(sub.plan_code)
        and sub.status in BILLABLE
        and sub.next_billing_date == item.due_date
        and sub.current_period_start < item.due_date
    )


def _credit_key(sub: Subscription) -> tuple[str, str]:
    return sub.account_id, sub.amount.currency


def _reason(step: str, error: BaseException) -> str:
    return f"{step}: {type(error).__name__}: {error}"[:REASON_LENGTH]


def _log_parked(item: WorkItem, reason: str) -> None:
    log.warning(
        "work item parked",
        extra={"item": item.item_id, "run": item.run_id, "occurrence": item.occurrence_key, "reason": reason},
    )
