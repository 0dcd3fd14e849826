"""In-memory repositories over plain tables, one unit of work per transaction (rolled back when the
use case raises), and fakes of the services recurring calls: for fast unit tests of the use cases."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
from collections import Counter
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import cast

import asyncpg

from billing_common.errors import BillingError, KeyInFlight, KeyReused
from billing_common.idempotency import IdempotencyKey
from billing_common.locks import Lease
from billing_common.money import Money
from billing_common.payments import DeclineKind, FailureType
from billing_common.subscriptions import Frequency
from recurring.domain import ledger
from recurring.domain.events import Event
from recurring.domain.invoicing import Invoice, PeriodUsage, Transaction
from recurring.domain.payments import ChargeRequest, ChargeResult, NoAnswer, PaymentStatus
from recurring.domain.proration import ProrationLine
from recurring.domain.runs import (
    AfterFailure,
    ItemResult,
    ItemStatus,
    Progress,
    Run,
    RunCounts,
    RunKind,
    RunState,
    WorkItem,
)
from recurring.domain.settlement import Charge
from recurring.domain.settlement import Proration as OpenProration
from recurring.domain.status import BILLABLE, SCHEDULED, TERMINAL, InvoiceStatus
from recurring.domain.subscription import HistoryEntry, PlanInfo, Subscription
from recurring.domain.usage import UsagePeriod

OPEN_ITEMS = (ItemStatus.PENDING, ItemStatus.CLAIMED, ItemStatus.DEFERRED)


@dataclass
class ItemState:
    item: WorkItem
    status: ItemStatus = ItemStatus.CLAIMED
    detail: str = ""
    invoice_id: str | None = None
    failures: int = 0
    claim_token: str | None = None


@dataclass
class Proration:
    proration_id: int
    subscription_id: str
    description: str
    amount: Money
    invoice_id: str | None = None


@dataclass
class Tables:
    """Everything the repositories hold."""

    subscriptions: dict[str, Subscription] = field(default_factory=dict)
    history: list[HistoryEntry] = field(default_factory=list)
    prorations: list[Proration] = field(default_factory=list)
    runs: dict[str, Run] = field(default_factory=dict)
    items: dict[int, ItemState] = field(default_factory=dict)
    invoices: dict[str, Invoice] = field(default_factory=dict)
    attempts: dict[str, list[Transaction]] = field(default_factory=dict)
    postings: list[ledger.Posting] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    # (scope, key) -> (fingerprint, answer; None until the claiming call completes it)
    keys: dict[tuple[str, str], tuple[str, str | None]] = field(default_factory=dict)

    def claim(self, items: Sequence[WorkItem]) -> None:
        for item in items:
            self.items[item.item_id] = ItemState(item, claim_token=item.claim_token)

    def held(self, item: WorkItem) -> ItemState | None:
        state = self.items.get(item.item_id)
        if state is None or state.status is not ItemStatus.CLAIMED or state.claim_token != item.claim_token:
            return None
        return state

    def credit(self, customer: str, currency: str) -> Money:
        return Money(-self.balance(ledger.customer_credit(customer), currency), currency)

    def balance(self, account: str, currency: str) -> int:
        return sum(
            e.amount.amount_minor
            for p in self.postings
            for e in p.entries
            if e.account == account and e.amount.currency == currency
        )


class FakeSubscriptions:
    def __init__(self, t: Tables) -> None:
        self._t = t

    async def add(self, subs: Sequence[Subscription]) -> None:
        for sub in subs:
            assert sub.subscription_id not in self._t.subscriptions
            self._t.subscriptions[sub.subscription_id] = sub

    async def load(self, subscription_ids: Sequence[str], *, lock: bool = False) -> dict[str, Subscription]:
        return {sid: self._t.subscriptions[sid] for sid in subscription_ids if sid in self._t.subscriptions}

    async def save(self, subs: Sequence[Subscription]) -> None:
        for sub in subs:
            self._t.subscriptions[sub.subscription_id] = sub

    async def tier_mapped(self, account_id: str) -> list[str]:
        return sorted(
            sid
            for sid, sub in self._t.subscriptions.items()
            if sub.account_id == account_id and sub.tier_mapped and sub.status not in TERMINAL
        )

    async def add_history(self, entries: Sequence[HistoryEntry]) -> None:
        self._t.history += entries

    async def add_prorations(self, lines: Mapping[str, Sequence[ProrationLine]]) -> None:
        for sid, found in lines.items():
            for line in found:
                self._t.prorations.append(
                    Proration(len(self._t.prorations) + 1, sid, line.description, line.amount)
                )

    async def open_prorations(self, subscription_ids: Sequence[str]) -> dict[str, list[OpenProration]]:
        found: dict[str, list[OpenProration]] = {}
        for p in self._t.prorations:
            if p.subscription_id in subscription_ids and p.invoice_id is None:
                found.setdefault(p.subscription_id, []).append((p.proration_id, p.description, p.amount))
        return found

    async def attach_prorations(self, ids_by_invoice: Mapping[str, Sequence[int]]) -> None:
        for invoice_id, ids in ids_by_invoice.items():
            for p in self._t.prorations:
                if p.proration_id in ids:
                    p.invoice_id = invoice_id


class FakeRuns:
    def __init__(self, t: Tables) -> None:
        self._t = t

    def _counted(self, run: Run) -> Run:
        return run if run.dry_run else dataclasses.replace(run, counts=self._counts(run.run_id))

    def _counts(self, run_id: str) -> RunCounts:
        states = [s.status for s in self._t.items.values() if s.item.run_id == run_id]
        return RunCounts(
            due=len(states),
            charged=states.count(ItemStatus.CHARGED),
            failed=states.count(ItemStatus.FAILED),
            skipped=states.count(ItemStatus.SKIPPED),
            deferred=states.count(ItemStatus.DEFERRED),
            pending=states.count(ItemStatus.PENDING) + states.count(ItemStatus.CLAIMED),
            parked=states.count(ItemStatus.PARKED),
        )

    async def add(self, runs: Sequence[Run]) -> None:
        for run in runs:
            if run.dry_run or await self.find(run.billing_date, run.kind) is None:
                self._t.runs[run.run_id] = run

    async def find(self, billing_date: date, kind: RunKind) -> Run | None:
        found = [
            r
            for r in self._t.runs.values()
            if (r.billing_date, r.kind, r.dry_run) == (billing_date, kind, False)
        ]
        return self._counted(found[0]) if found else None

    async def load(self, run_ids: Sequence[str], *, lock: bool = False) -> dict[str, Run]:
        return {rid: self._counted(self._t.runs[rid]) for rid in run_ids if rid in self._t.runs}

    async def latest(self, kind: RunKind, not_after: date) -> Run | None:
        found = [
            r
            for r in self._t.runs.values()
            if r.kind is kind and not r.dry_run and r.billing_date <= not_after
        ]
        return self._counted(max(found, key=lambda r: r.billing_date)) if found else None

    async def running(self) -> list[Run]:
        found = [r for r in self._t.runs.values() if r.state is RunState.RUNNING and not r.dry_run]
        return [self._counted(r) for r in sorted(found, key=lambda r: (r.billing_date, r.kind.value))]

    async def set_states(self, run_ids: Sequence[str], state: RunState, finished_at: datetime | None) -> None:
        for rid in run_ids:
            self._t.runs[rid] = dataclasses.replace(self._t.runs[rid], state=state, finished_at=finished_at)

    async def save_progress(self, progress: Mapping[str, Progress]) -> None:
        for rid, seen in progress.items():
            self._t.runs[rid] = dataclasses.replace(self._t.runs[rid], progress=seen)

    async def halt(self, run_id: str, gateway: str) -> bool:
        run = self._t.runs[run_id]
        if gateway in run.halted_gateways:
            return False
        self._t.runs[run_id] = dataclasses.replace(run, halted_gateways=(*run.halted_gateways, gateway))
        return True

    async def resume(self, run_id: str, gateway: str) -> bool:
        run = self._t.runs[run_id]
        if gateway not in run.halted_gateways:
            return False
        left = tuple(g for g in run.halted_gateways if g != gateway)
        self._t.runs[run_id] = dataclasses.replace(run, halted_gateways=left)
        return True

    async def counts(self, run_ids: Sequence[str]) -> dict[str, RunCounts]:
        return {rid: self._counts(rid) for rid in run_ids}

    async def open_items(self, run_id: str) -> int:
        halted = self._t.runs[run_id].halted_gateways
        return sum(
            1
            for s in self._t.items.values()
            if s.item.run_id == run_id and s.status in OPEN_ITEMS and s.item.gateway not in halted
        )

    async def deferred_items(self, run_id: str, gateway: str) -> int:
        return sum(
            1
            for s in self._t.items.values()
            if (s.item.run_id, s.item.gateway) == (run_id, gateway) and s.status in OPEN_ITEMS
        )

    def _due(self, billing_date: date, frequencies: Sequence[Frequency]) -> list[Subscription]:
        return [
            sub
            for _, sub in sorted(self._t.subscriptions.items())
            if sub.frequency in frequencies
            and sub.next_billing_date is not None
            and sub.next_billing_date <= billing_date
            and sub.status in SCHEDULED
        ]

    async def enqueue_due(self, run_id: str, billing_date: date, frequencies: Sequence[Frequency]) -> int:
        queued = {s.item.occurrence_key for s in self._t.items.values()}
        added = 0
        for sub in self._due(billing_date, frequencies):
            assert sub.next_billing_date is not None
            key = f"{sub.subscription_id}:{sub.next_billing_date.isoformat()}"
            if key in queued:
                continue
            item_id = len(self._t.items) + 1
            # Queued unrouted: the gateway is the one gateway-adapter's answer names.
            item = WorkItem(item_id, run_id, sub.subscription_id, sub.next_billing_date, key, "", "")
            self._t.items[item_id] = ItemState(item, ItemStatus.PENDING)
            added += 1
        return added

    async def count_due(self, billing_date: date, frequencies: Sequence[Frequency]) -> tuple[int, int]:
        due = self._due(billing_date, frequencies)
        billable = sum(1 for sub in due if sub.status in BILLABLE)
        return billable, len(due) - billable


class FakeWorkItems:
    """Claims ignore leases and delays: a deferred item is claimable again at once."""

    def __init__(self, t: Tables) -> None:
        self._t = t

    async def claim(self, limit: int, lease: timedelta, claim_token: str) -> list[WorkItem]:
        claimed: list[WorkItem] = []
        for state in sorted(self._t.items.values(), key=lambda s: s.item.item_id):
            halted = self._t.runs[state.item.run_id].halted_gateways
            if len(claimed) == limit or state.status not in (ItemStatus.PENDING, ItemStatus.DEFERRED):
                continue
            if state.item.gateway in halted:
                continue
            item = dataclasses.replace(state.item, claim_token=claim_token, failures=state.failures)
            state.item, state.status, state.claim_token = item, ItemStatus.CLAIMED, claim_token
            claimed.append(item)
        return claimed

    async def held(self, items: Sequence[WorkItem]) -> set[int]:
        return {item.item_id for item in items if self._t.held(item) is not None}

    async def finish(self, results: Sequence[ItemResult]) -> None:
        for result in results:
            state = self._t.held(result.item)
            if state is not None:
                state.item, state.status, state.detail = result.item, result.status, result.detail
                state.invoice_id = result.invoice_id or state.invoice_id
                state.claim_token = None

    async def defer(self, deferrals: Sequence[tuple[WorkItem, timedelta, str]]) -> None:
        for item, _, detail in deferrals:
            state = self._t.held(item)
            if state is not None:
                state.item, state.status, state.detail = item, ItemStatus.DEFERRED, detail
                state.claim_token = None

    async def record_failures(self, failures: Sequence[tuple[WorkItem, AfterFailure, str]]) -> list[WorkItem]:
        parked = []
        for item, after, detail in failures:
            state = self._t.held(item)
            if state is None:
                continue
            state.status = ItemStatus.PARKED if after.park else ItemStatus.DEFERRED
            state.failures, state.detail, state.claim_token = after.failures, detail, None
            if after.park:
                parked.append(item)
        return parked

    async def release(self, claimant: str) -> int:
        released = 0
        for state in self._t.items.values():
            if state.status is ItemStatus.CLAIMED and (state.claim_token or "").startswith(f"{claimant}."):
                state.status, state.claim_token = ItemStatus.PENDING, None
                released += 1
        return released

    async def requeue_parked(self, run_id: str, gateway: str) -> int:
        requeued = 0
        for state in self._t.items.values():
            if (state.item.run_id, state.item.gateway, state.status) == (run_id, gateway, ItemStatus.PARKED):
                state.status, state.failures = ItemStatus.PENDING, 0
                requeued += 1
        return requeued


class FakeInvoices:
    def __init__(self, t: Tables) -> None:
        self._t = t

    async def add(self, invoices: Sequence[Invoice]) -> None:
        for invoice in invoices:
            assert invoice.invoice_id not in self._t.invoices
            assert all(i.occurrence_key != invoice.occurrence_key for i in self._t.invoices.values())
            self._t.invoices[invoice.invoice_id] = invoice

    async def load(self, invoice_ids: Sequence[str], *, lock: bool = False) -> dict[str, Invoice]:
        return {iid: self._t.invoices[iid] for iid in invoice_ids if iid in self._t.invoices}

    async def for_occurrences(self, occurrence_keys: Sequence[str]) -> dict[str, Invoice]:
        keys = set(occurrence_keys)
        return {i.occurrence_key: i for i in self._t.invoices.values() if i.occurrence_key in keys}

    async def set_statuses(
        self, invoice_ids: Sequence[str], status: InvoiceStatus, paid_at: datetime | None = None
    ) -> None:
        for iid in invoice_ids:
            invoice = self._t.invoices[iid]
            self._t.invoices[iid] = dataclasses.replace(
                invoice, status=status, paid_at=paid_at or invoice.paid_at
            )

    async def set_refunds(self, refunded: Mapping[str, int]) -> None:
        for iid, total in refunded.items():
            self._t.invoices[iid] = dataclasses.replace(self._t.invoices[iid], refunded_minor=total)

    async def unpaid_counts(self, subscription_ids: Sequence[str]) -> dict[str, int]:
        unpaid: dict[str, int] = {}
        for invoice in self._t.invoices.values():
            if invoice.subscription_id in subscription_ids and invoice.status in (
                InvoiceStatus.OPEN,
                InvoiceStatus.PAYMENT_FAILED,
            ):
                unpaid[invoice.subscription_id] = unpaid.get(invoice.subscription_id, 0) + 1
        return unpaid

    async def add_attempts(self, txns: Sequence[Transaction]) -> None:
        for txn in txns:
            self._t.attempts.setdefault(txn.invoice_id, []).append(txn)

    async def save_attempts(self, txns: Sequence[Transaction]) -> None:
        for txn in txns:
            found = self._t.attempts[txn.invoice_id]
            index = next(i for i, t in enumerate(found) if t.transaction_id == txn.transaction_id)
            found[index] = txn

    async def attempts_of(self, invoice_ids: Sequence[str]) -> dict[str, list[Transaction]]:
        return {iid: list(self._t.attempts[iid]) for iid in invoice_ids if self._t.attempts.get(iid)}

    def _all_attempts(self) -> list[Transaction]:
        return [t for found in self._t.attempts.values() for t in found]

    async def by_retry_keys(self, retry_keys: Sequence[str]) -> dict[str, Transaction]:
        return {t.retry_key: t for t in self._all_attempts() if t.retry_key and t.retry_key in retry_keys}

    async def find_for_payment(self, payment_id: str, idempotency_key: str) -> Transaction | None:
        by_key = [t for t in self._all_attempts() if t.idempotency_key == idempotency_key]
        by_payment = [t for t in self._all_attempts() if payment_id and t.payment_id == payment_id]
        return (by_key + by_payment + [None])[0]


class FakeLedger:
    def __init__(self, t: Tables) -> None:
        self._t = t

    async def post(self, postings: Sequence[ledger.Posting], at: datetime) -> None:
        self._t.postings += postings

    async def credits(self, customers: Sequence[tuple[str, str]]) -> dict[tuple[str, str], Money]:
        return {(c, cur): self._t.credit(c, cur) for c, cur in customers}

    async def balances(self, customer: str, currency: str) -> tuple[Money, Money]:
        owed = self._t.balance(ledger.receivable(customer), currency)
        credit = self._t.balance(ledger.customer_credit(customer), currency)
        return Money(owed + credit, currency), Money(max(0, -credit), currency)


class FakeOutbox:
    def __init__(self, t: Tables) -> None:
        self._t = t

    async def add(self, events: Sequence[Event], traces: Sequence[Mapping[str, str]] = ()) -> None:
        self._t.events += events


class FakeKeys:
    """The answers of billing_common.idempotency's claim and complete, on a table."""

    def __init__(self, t: Tables) -> None:
        self._t = t

    async def claim(self, idem: IdempotencyKey) -> str | None:
        earlier = self._t.keys.get((idem.scope, idem.key))
        if earlier is None:
            self._t.keys[(idem.scope, idem.key)] = (idem.fingerprint, None)
            return None
        fingerprint, answer = earlier
        if fingerprint != idem.fingerprint:
            raise KeyReused(idem.key)
        if answer is None:
            raise KeyInFlight(idem.key)
        return answer

    async def complete(self, idem: IdempotencyKey, answer: str) -> None:
        if self._t.keys.get((idem.scope, idem.key)) != (idem.fingerprint, None):
            raise RuntimeError(
                f"idempotency key {idem.key!r} was completed without being claimed in this call"
            )
        self._t.keys[(idem.scope, idem.key)] = (idem.fingerprint, answer)


class FakeUnitOfWork:
    def __init__(self, t: Tables) -> None:
        self.subscriptions = FakeSubscriptions(t)
        self.runs = FakeRuns(t)
        self.items = FakeWorkItems(t)
        self.invoices = FakeInvoices(t)
        self.ledger = FakeLedger(t)
        self.outbox = FakeOutbox(t)
        self.keys = FakeKeys(t)

    async def check_fence(self, lease: Lease) -> None:
        return None


class FakeStore:
    """Transactions over one set of tables; one that raises leaves the tables as they were."""

    def __init__(self, tables: Tables | None = None) -> None:
        self.tables = tables or Tables()
        self.commits = 0

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[FakeUnitOfWork]:
        before = copy.deepcopy(self.tables)
        try:
            yield FakeUnitOfWork(self.tables)
        except BaseException:
            for name in (f.name for f in dataclasses.fields(Tables)):
                setattr(self.tables, name, getattr(before, name))
            raise
        self.commits += 1

    def within(self, conn: asyncpg.Connection) -> FakeUnitOfWork:
        return FakeUnitOfWork(self.tables)

    @contextlib.asynccontextmanager
    async def inbox(self) -> AsyncIterator[asyncpg.Connection]:
        """An event's inbox transaction: what a handler's use case writes `within` its connection
        commits, or rolls back, with it."""
        async with self.transaction():
            yield cast(asyncpg.Connection, object())


# ------------------------------------------------------------------ the services recurring calls


class FakeGateway:
    """Answers each charge with the outcome its token names ("ok", "decline", "unreachable",
    "silent"), routed as gateway-adapter routes the method; a key sent again gets its first answer,
    as gateway-adapter's replay does. `calls` holds every charge, alone or inside a batch."""

    ROUTES = {"card": "sandbox-card", "ach": "sandbox-ach", "stripe": "stripe"}

    def __init__(self) -> None:
        self.calls: list[ChargeRequest] = []
        self.batches = 0
        self._answers: dict[str, ChargeResult] = {}

    async def charge(self, request: ChargeRequest) -> ChargeResult | NoAnswer:
        return self._answer_once(request)

    async def charge_batch(self, requests: Sequence[ChargeRequest]) -> list[ChargeResult | NoAnswer]:
        self.batches += 1
        return [self._answer_once(request) for request in requests]

    def _answer_once(self, request: ChargeRequest) -> ChargeResult | NoAnswer:
        self.calls.append(request)
        if request.token == "silent":
            return NoAnswer("UNAVAILABLE", "connection refused", ours=False)
        if request.token == "broken":
            return NoAnswer("INTERNAL", "stream reset", ours=True)
        if request.idempotency_key not in self._answers:
            self._answers[request.idempotency_key] = _answer(request, self.ROUTES[request.method_type])
        return self._answers[request.idempotency_key]


def _answer(request: ChargeRequest, gateway: str) -> ChargeResult:
    pay = f"pay_{request.idempotency_key}"
    if request.token == "decline":
        return ChargeResult(
            pay, PaymentStatus.DECLINED, gateway, FailureType.CARDHOLDER, DeclineKind.SOFT, "do_not_honor"
        )
    if request.token == "unreachable":
        return ChargeResult("", PaymentStatus.FAILED, gateway, FailureType.GATEWAY_UNREACHABLE)
    return ChargeResult(pay, PaymentStatus.SUCCEEDED, gateway)


class FakeOutages:
    def __init__(self) -> None:
        self.unreachable_in_a_row: dict[tuple[str, str], int] = {}

    async def unreachable(self, run_id: str, gateway: str) -> int:
        key = (run_id, gateway)
        self.unreachable_in_a_row[key] = self.unreachable_in_a_row.get(key, 0) + 1
        return self.unreachable_in_a_row[key]

    async def reachable(self, run_id: str, gateway: str) -> None:
        self.unreachable_in_a_row[(run_id, gateway)] = 0


class RecordedMetrics:
    """The figures the use cases report, kept for the tests to read."""

    def __init__(self) -> None:
        self.charges: Counter[tuple[str, str]] = Counter()
        self.parked: Counter[str] = Counter()
        self.stalled: dict[RunKind, int] = {}

    def charge_answered(self, gateway: str, status: str) -> None:
        self.charges[(gateway, status)] += 1

    def item_parked(self, item: WorkItem, reason: str) -> None:
        self.parked[item.gateway] += 1

    def runs_stalled(self, kind: RunKind, count: int) -> None:
        self.stalled[kind] = count


class NoTraces:
    """Charges traced nowhere: what their answers announce is written under the current trace."""

    def answered(self, charge: Charge, result: ChargeResult | NoAnswer) -> dict[str, str]:
        return {}


class FakeQuota:
    """Plans by code, and one usage report (priced usage and add-ons held) for every period asked;
    `usage_calls` counts calls, `periods_asked` the periods in them."""

    def __init__(self, plans: Sequence[PlanInfo] = ()) -> None:
        self.plans = {plan.code: plan for plan in plans}
        self.tiers: dict[str, str] = {}
        self.usage_of_period = PeriodUsage()
        self.usage_calls = 0
        self.periods_asked: list[UsagePeriod] = []

    async def get_plan(self, code: str, version: int = 0) -> PlanInfo:
        return self.plans[code]

    async def usages(self, periods: Sequence[UsagePeriod]) -> list[PeriodUsage | BillingError]:
        self.usage_calls += 1
        self.periods_asked.extend(periods)
        return [self.usage_of_period for _ in periods]

    async def plan_for_tier(self, tier: str) -> str | None:
        return self.tiers.get(tier)


class FakeLocks:
    """Every lock is free."""

    @contextlib.asynccontextmanager
    async def try_hold(
        self, name: str, ttl: timedelta, *, wait: timedelta = timedelta(0)
    ) -> AsyncIterator[Lease | None]:
        yield Lease(name, f"lock:{name}", "test", 1)
