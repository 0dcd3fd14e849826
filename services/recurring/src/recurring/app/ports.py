"""What the use cases need from the outside world: one small repository per aggregate, all inside
one unit of work (a database transaction), and the services recurring calls."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from datetime import date, datetime, timedelta
from typing import Protocol

import asyncpg

from billing_common.errors import BillingError
from billing_common.idempotency import IdempotencyKey
from billing_common.locks import Lease
from billing_common.money import Money
from billing_common.subscriptions import Frequency
from recurring.domain.events import Event
from recurring.domain.invoicing import Invoice, PeriodUsage, Transaction
from recurring.domain.ledger import Posting
from recurring.domain.payments import ChargeRequest, ChargeResult, NoAnswer
from recurring.domain.proration import ProrationLine
from recurring.domain.runs import (
    AfterFailure,
    ItemResult,
    Progress,
    Run,
    RunCounts,
    RunKind,
    RunState,
    WorkItem,
)
from recurring.domain.settlement import Charge, Proration
from recurring.domain.status import InvoiceStatus
from recurring.domain.subscription import HistoryEntry, PlanInfo, Subscription
from recurring.domain.usage import UsagePeriod


class SubscriptionRepository(Protocol):
    """Subscriptions with their history and the prorations waiting for their next invoice."""

    async def add(self, subs: Sequence[Subscription]) -> None: ...
    async def load(self, subscription_ids: Sequence[str], *, lock: bool = False) -> dict[str, Subscription]:
        """By id; missing ones are left out."""

    async def save(self, subs: Sequence[Subscription]) -> None: ...
    async def tier_mapped(self, account_id: str) -> list[str]:
        """Ids of the account's live subscriptions whose plan follows its tier."""

    async def add_history(self, entries: Sequence[HistoryEntry]) -> None: ...
    async def add_prorations(self, lines: Mapping[str, Sequence[ProrationLine]]) -> None:
        """Lines for the next invoice, by subscription id."""

    async def open_prorations(self, subscription_ids: Sequence[str]) -> dict[str, list[Proration]]: ...
    async def attach_prorations(self, ids_by_invoice: Mapping[str, Sequence[int]]) -> None: ...


class RunRepository(Protocol):
    async def add(self, runs: Sequence[Run]) -> None:
        """A real run of a date and kind that exists already is left as it is."""

    async def find(self, billing_date: date, kind: RunKind) -> Run | None:
        """The real run of the date and kind."""

    async def load(self, run_ids: Sequence[str], *, lock: bool = False) -> dict[str, Run]: ...
    async def latest(self, kind: RunKind, not_after: date) -> Run | None:
        """The real run of the kind with the latest billing date on or before `not_after`."""

    async def running(self) -> list[Run]:
        """Real runs still RUNNING, oldest date first, with what the scheduler last saw of them."""

    async def set_states(
        self, run_ids: Sequence[str], state: RunState, finished_at: datetime | None
    ) -> None: ...
    async def save_progress(self, progress: Mapping[str, Progress]) -> None:
        """By run id."""

    async def halt(self, run_id: str, gateway: str) -> bool:
        """Add the gateway to the run's halted ones; False if it was halted already."""

    async def resume(self, run_id: str, gateway: str) -> bool: ...
    async def counts(self, run_ids: Sequence[str]) -> dict[str, RunCounts]: ...
    async def open_items(self, run_id: str) -> int:
        """Items still to work: pending, claimed, or deferred on a gateway that is not halted."""

    async def deferred_items(self, run_id: str, gateway: str) -> int: ...
    async def enqueue_due(self, run_id: str, billing_date: date, frequencies: Sequence[Frequency]) -> int:
        """Work items for every scheduled subscription due on or before the date; never one twice."""

    async def count_due(self, billing_date: date, frequencies: Sequence[Frequency]) -> tuple[int, int]:
        """(billable, would be skipped) subscriptions due on or before the date."""


class WorkItemRepository(Protocol):
    """A run's due occurrences, claimed by workers under a lease and token."""

    async def claim(self, limit: int, lease: timedelta, claim_token: str) -> list[WorkItem]: ...
    async def held(self, items: Sequence[WorkItem]) -> set[int]:
        """Lock the items; the ids of those this claim still owns."""

    async def finish(self, results: Sequence[ItemResult]) -> None: ...
    async def defer(self, deferrals: Sequence[tuple[WorkItem, timedelta, str]]) -> None:
        """Let each item wait its delay, with its detail, unless its claim was lost."""

    async def record_failures(self, failures: Sequence[tuple[WorkItem, AfterFailure, str]]) -> list[WorkItem]:
        """Count a failure of ours per item: park it or let it wait; returns the items parked now
        (an item whose claim was lost is left alone)."""

    async def release(self, claimant: str) -> int:
        """Hand back the items still claimed under tokens starting with `claimant`; how many."""

    async def requeue_parked(self, run_id: str, gateway: str) -> int:
        """Send the run's parked items of the gateway back to work, with their failures forgotten."""


class InvoiceRepository(Protocol):
    """Invoices with their lines, and their charge attempts (transactions)."""

    async def add(self, invoices: Sequence[Invoice]) -> None: ...
    async def load(self, invoice_ids: Sequence[str], *, lock: bool = False) -> dict[str, Invoice]:
        """With lines, by id; missing ones are left out."""

    async def for_occurrences(self, occurrence_keys: Sequence[str]) -> dict[str, Invoice]:
        """By occurrence key, without lines."""

    async def set_statuses(
        self, invoice_ids: Sequence[str], status: InvoiceStatus, paid_at: datetime | None = None
    ) -> None: ...
    async def set_refunds(self, refunded: Mapping[str, int]) -> None:
        """The refunded total of each invoice, by id."""

    async def unpaid_counts(self, subscription_ids: Sequence[str]) -> dict[str, int]:
        """Open or failed invoices per subscription; those with none are left out."""

    async def add_attempts(self, attempts: Sequence[Transaction]) -> None: ...
    async def save_attempts(self, attempts: Sequence[Transaction]) -> None: ...
    async def attempts_of(self, invoice_ids: Sequence[str]) -> dict[str, list[Transaction]]:
        """Every attempt of each invoice, in attempt order."""

    async def by_retry_keys(self, retry_keys: Sequence[str]) -> dict[str, Transaction]: ...
    async def find_for_payment(self, payment_id: str, idempotency_key: str) -> Transaction | None:
        """The attempt a payment event is about: by its key first, else by the gateway's id."""


class Ledger(Protocol):
    async def post(self, postings: Sequence[Posting], at: datetime) -> None:
        """Each posting is one ledger transaction."""

    async def credits(self, customers: Sequence[tuple[str, str]]) -> dict[tuple[str, str], Money]:
        """Credit available to each (customer, currency)."""

    async def balances(self, customer: str, currency: str) -> tuple[Money, Money]:
        """(balance: receivable plus credit accounts, credit available) of a customer."""


class Outbox(Protocol):
    async def add(self, events: Sequence[Event], traces: Sequence[Mapping[str, str]] = ()) -> None:
        """`traces`: the stored trace each event is written under ({} or none: the current one)."""


class IdempotencyKeys(Protocol):
    async def claim(self, idem: IdempotencyKey) -> str | None:
        """None when the key is new; else the earlier call's answer (see billing_common.idempotency)."""

    async def complete(self, idem: IdempotencyKey, answer: str) -> None: ...


class UnitOfWork(Protocol):
    """One database transaction: every write of a use case commits (or not) together."""

    @property
    def subscriptions(self) -> SubscriptionRepository: ...
    @property
    def runs(self) -> RunRepository: ...
    @property
    def items(self) -> WorkItemRepository: ...
    @property
    def invoices(self) -> InvoiceRepository: ...
    @property
    def ledger(self) -> Ledger: ...
    @property
    def outbox(self) -> Outbox: ...
    @property
    def keys(self) -> IdempotencyKeys: ...

    async def check_fence(self, lease: Lease) -> None: ...


class Store(Protocol):
    def transaction(self) -> AbstractAsyncContextManager[UnitOfWork]: ...
    def within(self, conn: asyncpg.Connection) -> UnitOfWork:
        """The transaction an event handler already runs in (the inbox's)."""


class Quota(Protocol):
    async def get_plan(self, code: str, version: int = 0) -> PlanInfo: ...
    async def usages(self, periods: Sequence[UsagePeriod]) -> list[PeriodUsage | BillingError]:
        """One answer per period, in order: its billable usage and add-ons, or why quota gave none
        (Unavailable for each when quota did not answer)."""

    async def plan_for_tier(self, tier: str) -> str | None: ...


class Gateway(Protocol):
    """gateway-adapter: it routes each charge to a gateway and paces it under that gateway's limit.
    A refusal of the request comes back as a failed result (`domain.payments.refusal`); NoAnswer
    when there was no word about the payment (or back-pressure: send the same key again later)."""

    async def charge(self, request: ChargeRequest) -> ChargeResult | NoAnswer:
        """One charge someone waits for, in the interactive lane."""

    async def charge_batch(self, requests: Sequence[ChargeRequest]) -> list[ChargeResult | NoAnswer]:
        """A run's charges, in the batch lane; one answer per request, in order."""


class OutageCounter(Protocol):
    """Consecutive unreachable results per run and gateway, shared by every pod."""

    async def unreachable(self, run_id: str, gateway: str) -> int: ...
    async def reachable(self, run_id: str, gateway: str) -> None: ...


class ChargeTraces(Protocol):
    def answered(self, charge: Charge, result: ChargeResult | NoAnswer) -> Mapping[str, str]:
        """Trace the charge's answer; the trace what the answer announces is written under."""


class RecurringMetrics(Protocol):
    """What charging and the runs report; an adapter keeps the figures for the dashboards (and logs
    what an operator acts on)."""

    def charge_answered(self, gateway: str, status: str) -> None:
        """A charge's answer: the payment's status, or "refused" / "no_answer" (no gateway)."""

    def item_parked(self, item: WorkItem, reason: str) -> None:
        """An item set aside for a reason of ours; operators resume it (ResumeRun) once it is fixed."""

    def runs_stalled(self, kind: RunKind, count: int) -> None:
        """How many running runs of the kind are stalled now (0 once they move again)."""
