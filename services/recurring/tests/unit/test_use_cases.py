"""The use cases on in-memory repositories: subscriptions, runs, the worker's billing of a batch,
and invoices after they are opened. Amounts, states, events and gateway calls, in milliseconds."""

from __future__ import annotations

import asyncio
import copy
import dataclasses
from collections.abc import Callable, Coroutine
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from billing_common.clock import ControllableClock
from billing_common.errors import FailedPrecondition, InvalidArgument, KeyReused
from billing_common.idempotency import IdempotencyKey
from billing_common.money import Money
from billing_common.payments import MethodType
from billing_common.subscriptions import ExhaustedAction, Frequency, SubscriptionStatus
from recurring.app.invoices import Invoices
from recurring.app.runs import Runs, Schedule
from recurring.app.subscriptions import Subscriptions
from recurring.app.worker import Worker, WorkerConfig
from recurring.domain import events as ev
from recurring.domain import ledger
from recurring.domain.amendments import Changes, CreateCommand
from recurring.domain.invoicing import AddOnUse, LineKind, PeriodUsage, UsageCharge
from recurring.domain.payments import ChargeResult, PaymentStatus, PaymentUpdate
from recurring.domain.runs import ItemStatus, RunKind, RunState
from recurring.domain.schedule import Period
from recurring.domain.settlement import ExhaustionPolicy, Rules
from recurring.domain.status import InvoiceStatus
from recurring.domain.subscription import Cause, PaymentMethod, PlanInfo, Subscription
from services.recurring.tests.fakes import (
    FakeGateway,
    FakeLocks,
    FakeOutages,
    FakeQuota,
    FakeStore,
    NoTraces,
    RecordedMetrics,
)

UTC_ZONE = ZoneInfo("UTC")
TODAY = date(2026, 3, 10)
START = datetime.combine(TODAY, time(9), UTC)
USD = "USD"
BASIC = PlanInfo("basic", 1, "Basic", Money(3000, USD), Frequency.MONTHLY, 0)
PRO = PlanInfo("pro", 2, "Pro", Money(6000, USD), Frequency.MONTHLY, 0)
CHEAP = PlanInfo("cheap", 1, "Cheap", Money(1000, USD), Frequency.MONTHLY, 0)
RULES = Rules(minimum_charge_minor=50, max_failures=3, defer_delay=timedelta(minutes=1), halt_threshold=5)
OPERATOR = Cause("operator")
T = TypeVar("T")


def usd(minor: int) -> Money:
    return Money(minor, USD)


def run(step: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(step)


class Billing:
    """recurring's use cases wired to in-memory repositories and fakes of quota and gateway-adapter."""

    def __init__(self, halt_threshold: int = 5) -> None:
        self.store = FakeStore()
        self.tables = self.store.tables
        self.clock = ControllableClock(START)
        self.quota = FakeQuota([BASIC, PRO, CHEAP])
        self.gateway = FakeGateway()
        self.outages = FakeOutages()
        schedule = Schedule(
            UTC_ZONE, {RunKind.MONTHLY: time(3)}, 3, timedelta(minutes=5), timedelta(minutes=30)
        )
        self.subscriptions = Subscriptions(self.store, self.quota, self.clock, UTC_ZONE)
        self.metrics = RecordedMetrics()
        self.runs = Runs(self.store, FakeLocks(), self.outages, self.clock, schedule, self.metrics)
        policy = ExhaustionPolicy(ExhaustedAction.SUSPEND, cancel_merchants=frozenset())
        self.invoices = Invoices(self.store, self.gateway, self.clock, policy, RULES)
        config = WorkerConfig(
            batch_size=50,
            lease=timedelta(minutes=5),
            rules=dataclasses.replace(RULES, halt_threshold=halt_threshold),
            zone=UTC_ZONE,
        )
        self.worker = Worker(
            self.store,
            self.runs,
            self.gateway,
            self.quota,
            self.outages,
            self.clock,
            config,
            self.metrics,
            NoTraces(),
        )
        self._keys = 0

    def key(self, scope: str) -> IdempotencyKey:
        self._keys += 1
        return IdempotencyKey(scope, f"key-{self._keys}", f"fingerprint-{self._keys}")

    async def subscribe(
        self, token: str = "ok", plan: str = "basic", account: str = "acct_1"
    ) -> Subscription:
        method = PaymentMethod(MethodType.CARD, token)
        cmd = CreateCommand(account, "merch_1", plan, None, None, None, 0, method, False)
        return await self.subscriptions.create(cmd, self.key("CreateSubscription"), OPERATOR)

    async def work_once(self) -> int:
        """What one batch loop does once: claim a batch and work it; how many items."""
        items = await self.worker.claim()
        if items:
            await self.worker.work(items)
        return len(items)

    async def bill_today(self) -> str:
        """Start today's monthly run and work it to the end; the run's id."""
        started = await self.runs.start(self.clock.now().date(), RunKind.MONTHLY, wait=timedelta(0))
        assert started is not None
        while await self.work_once():
            pass
        return started.run_id

    def invoice_of(self, sub: Subscription) -> str:
        (invoice_id,) = [
            i.invoice_id for i in self.tables.invoices.values() if i.subscription_id == sub.subscription_id
        ]
        return invoice_id

    def events_of(self, kind: type[object]) -> list[object]:
        return [e for e in self.tables.events if isinstance(e, kind)]

    def balance(self, account: str) -> int:
        return self.tables.balance(account, USD)


def unchanged_by(
    billing: Billing, step: Callable[[], Coroutine[Any, Any, object]], error: type[Exception]
) -> None:
    before = copy.deepcopy(billing.tables)
    with pytest.raises(error):
        run(step())
    assert billing.tables == before


# ------------------------------------------------------------------ subscriptions


def test_creating_from_a_plan_snapshots_its_price_and_announces_it_once_per_key() -> None:
    billing = Billing()
    cmd = CreateCommand(
        "acct_1", "merch_1", "basic", None, None, None, 0, PaymentMethod(MethodType.CARD, "ok"), False
    )
    key = billing.key("CreateSubscription")
    first = run(billing.subscriptions.create(cmd, key, OPERATOR))
    again = run(billing.subscriptions.create(cmd, key, OPERATOR))
    assert again == first
    assert (first.amount, first.plan_version, first.status) == (usd(3000), 1, SubscriptionStatus.ACTIVE)
    assert first.next_billing_date == TODAY
    assert list(billing.tables.subscriptions) == [first.subscription_id]
    assert [type(e) for e in billing.tables.events] == [ev.SubscriptionCreated]
    assert [h.reason for h in billing.tables.history] == ["created"]


def test_a_key_sent_again_with_another_request_is_refused_and_writes_nothing() -> None:
    billing = Billing()
    sub = run(billing.subscribe())
    key = billing.key("PauseSubscription")
    run(billing.subscriptions.pause(sub.subscription_id, key, OPERATOR))
    before = copy.deepcopy(billing.tables)
    other = dataclasses.replace(key, fingerprint="another request")
    with pytest.raises(KeyReused):
        run(billing.subscriptions.pause(sub.subscription_id, other, OPERATOR))
    assert billing.tables == before


def test_a_create_without_pricing_names_the_field_and_writes_nothing() -> None:
    billing = Billing()
    cmd = CreateCommand(
        "acct_1", "merch_1", "", None, None, None, 0, PaymentMethod(MethodType.CARD, "ok"), False
    )
    before = copy.deepcopy(billing.tables)
    with pytest.raises(InvalidArgument, match="pricing: give either plan_code or custom_amount"):
        run(billing.subscriptions.create(cmd, billing.key("CreateSubscription"), OPERATOR))
    assert billing.tables == before


def test_an_upgrade_mid_period_prorates_the_rest_of_the_paid_period_onto_the_next_invoice() -> None:
    billing = Billing()
    sub = run(billing.subscribe())
    run(billing.bill_today())  # the period from March 10 is paid
    billing.clock.set(START + timedelta(days=12))  # 19 of the period's 31 days remain
    changes = Changes(frozenset({"plan_code"}), plan_code="pro")
    upgraded = run(
        billing.subscriptions.update(
            sub.subscription_id, changes, billing.key("UpdateSubscription"), OPERATOR
        )
    )
    assert (upgraded.plan_code, upgraded.amount) == ("pro", usd(6000))
    amounts = [p.amount.amount_minor for p in billing.tables.prorations]
    assert amounts == [-1839, 3678]  # 19/31 of the old price back, 19/31 of the new one charged
    (moved,) = billing.events_of(ev.SubscriptionPlanChanged)
    assert isinstance(moved, ev.SubscriptionPlanChanged)
    assert (moved.previous_plan_code, moved.previous_plan_version, moved.cause) == ("basic", 1, "rpc")

    billing.clock.set(START + timedelta(days=31))
    run(billing.bill_today())
    renewal = max(billing.tables.invoices.values(), key=lambda i: i.billing_date)
    assert renewal.total == usd(6000 - 1839 + 3678)
    assert [p.invoice_id for p in billing.tables.prorations] == [renewal.invoice_id] * 2


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 30), st.sampled_from([PRO, CHEAP]))
def test_a_plan_change_on_any_day_of_a_paid_period_bills_each_price_for_the_days_it_held(
    day: int, target: PlanInfo
) -> None:
    remaining = 31 - day
    billing = Billing()
    sub = run(billing.subscribe())
    run(billing.bill_today())
    billing.clock.set(START + timedelta(days=day))
    changes = Changes(frozenset({"plan_code"}), plan_code=target.code)
    run(
        billing.subscriptions.update(
            sub.subscription_id, changes, billing.key("UpdateSubscription"), OPERATOR
        )
    )
    billing.clock.set(START + timedelta(days=31))
    run(billing.bill_today())
    first, renewal = sorted(billing.tables.invoices.values(), key=lambda i: i.billing_date)
    held = BASIC.price.amount_minor * day + target.price.amount_minor * remaining
    # The period from March 10 (31 days) cost what each plan costs for the days it held, to a cent.
    paid_for_period = first.total.amount_minor + renewal.total.amount_minor - target.price.amount_minor
    assert abs(paid_for_period * 31 - held) <= 31
    assert (first.total, renewal.subscription_id) == (BASIC.price, sub.subscription_id)


def test_a_downgrade_credit_that_leaves_a_renewal_under_the_minimum_still_bills_every_period() -> None:
    billing = Billing()
    sub = run(billing.subscribe())
    run(billing.bill_today())
    billing.clock.set(START + timedelta(days=16))  # 15 of 31 days left: 968 back, 32 due on April 10
    changes = Changes(frozenset({"plan_code"}), plan_code=CHEAP.code)
    run(
        billing.subscriptions.update(
            sub.subscription_id, changes, billing.key("UpdateSubscription"), OPERATOR
        )
    )
    for renewal_day in (31, 61):  # April 10 and May 10
        billing.clock.set(START + timedelta(days=renewal_day))
        run(billing.bill_today())
    billed = sum(i.total.amount_minor for i in billing.tables.invoices.values())
    still_open = sum(p.amount.amount_minor for p in billing.tables.prorations if p.invoice_id is None)
    # March at Basic, April and May at Cheap, less the downgrade's 968: billed or still to bill.
    assert billed + still_open == 3000 + 1000 + 1000 - 968


def test_an_update_naming_an_unknown_field_is_refused_naming_update_mask_and_writes_nothing() -> None:
    billing = Billing()
    sub = run(billing.subscribe())
    changes = Changes(frozenset({"status"}))
    unchanged_by(
        billing,
        lambda: billing.subscriptions.update(
            sub.subscription_id, changes, billing.key("UpdateSubscription"), OPERATOR
        ),
        InvalidArgument,
    )
    with pytest.raises(InvalidArgument, match=r"update_mask: .*not \['status'\]"):
        run(
            billing.subscriptions.update(
                sub.subscription_id, changes, billing.key("UpdateSubscription"), OPERATOR
            )
        )


def test_pause_then_resume_moves_the_state_and_announces_each_once() -> None:
    billing = Billing()
    sub = run(billing.subscribe())
    paused = run(billing.subscriptions.pause(sub.subscription_id, billing.key("PauseSubscription"), OPERATOR))
    resumed = run(
        billing.subscriptions.resume(sub.subscription_id, billing.key("ResumeSubscription"), OPERATOR)
    )
    assert (paused.status, resumed.status) == (SubscriptionStatus.PAUSED, SubscriptionStatus.ACTIVE)
    assert (
        len(billing.events_of(ev.SubscriptionPaused)) == len(billing.events_of(ev.SubscriptionResumed)) == 1
    )


def test_a_cancelled_subscription_refuses_a_pause_and_nothing_changes() -> None:
    billing = Billing()
    sub = run(billing.subscribe())
    run(billing.subscriptions.cancel(sub.subscription_id, False, billing.key("CancelSubscription"), OPERATOR))
    unchanged_by(
        billing,
        lambda: billing.subscriptions.pause(sub.subscription_id, billing.key("PauseSubscription"), OPERATOR),
        FailedPrecondition,
    )


def test_cancelling_at_period_end_twice_announces_once_and_the_run_ends_it_without_a_charge() -> None:
    billing = Billing()
    sub = run(billing.subscribe())
    run(billing.bill_today())
    for _ in range(2):
        run(
            billing.subscriptions.cancel(
                sub.subscription_id, True, billing.key("CancelSubscription"), OPERATOR
            )
        )
    assert len(billing.events_of(ev.SubscriptionCancelled)) == 1
    calls = len(billing.gateway.calls)
    billing.clock.set(START + timedelta(days=31))
    run(billing.bill_today())
    ended = billing.tables.subscriptions[sub.subscription_id]
    assert (ended.status, ended.next_billing_date) == (SubscriptionStatus.CANCELLED, None)
    assert len(billing.gateway.calls) == calls
    assert len(billing.tables.invoices) == 1


def test_a_tier_change_moves_only_the_accounts_tier_mapped_subscriptions() -> None:
    billing = Billing()
    mapped = run(billing.subscribe())
    billing.tables.subscriptions[mapped.subscription_id] = dataclasses.replace(mapped, tier_mapped=True)
    other = run(billing.subscribe())
    billing.quota.tiers["gold"] = "pro"

    async def tier_changed() -> int:
        async with billing.store.inbox() as conn:
            return await billing.subscriptions.on_tier_changed(conn, "acct_1", "gold", Cause("tier.changed"))

    assert run(tier_changed()) == 1
    assert billing.tables.subscriptions[mapped.subscription_id].plan_code == "pro"
    assert billing.tables.subscriptions[other.subscription_id].plan_code == "basic"


# ------------------------------------------------------------------ runs and the worker


def test_a_batch_pays_declines_and_defers_with_one_charge_per_due_subscription_in_one_batch_call() -> None:
    billing = Billing()
    paid, declined, unreachable = (
        run(billing.subscribe(token)) for token in ("ok", "decline", "unreachable")
    )
    started = run(billing.runs.start(TODAY, RunKind.MONTHLY, wait=timedelta(0)))
    assert started is not None and started.counts.due == 3
    assert run(billing.work_once()) == 3
    assert (len(billing.gateway.calls), billing.gateway.batches) == (3, 1)
    statuses = [billing.tables.invoices[billing.invoice_of(s)].status for s in (paid, declined, unreachable)]
    assert statuses == [InvoiceStatus.PAID, InvoiceStatus.PAYMENT_FAILED, InvoiceStatus.OPEN]
    items = {s.item.subscription_id: s.status for s in billing.tables.items.values()}
    assert items[paid.subscription_id] is ItemStatus.CHARGED
    assert items[declined.subscription_id] is ItemStatus.FAILED
    assert items[unreachable.subscription_id] is ItemStatus.DEFERRED
    assert billing.balance(ledger.cash("sandbox-card")) == 3000
    assert billing.balance(ledger.receivable("acct_1")) == 6000
    assert len(billing.events_of(ev.InvoicePaid)) == len(billing.events_of(ev.InvoicePaymentFailed)) == 1
    assert billing.tables.subscriptions[declined.subscription_id].status is SubscriptionStatus.PAST_DUE


def test_a_deferred_item_is_sent_again_with_the_same_key_and_the_run_completes_once_paid() -> None:
    billing = Billing()
    sub = run(billing.subscribe("unreachable"))
    started = run(billing.runs.start(TODAY, RunKind.MONTHLY, wait=timedelta(0)))
    assert started is not None
    run(billing.work_once())
    billing.tables.subscriptions[sub.subscription_id] = dataclasses.replace(
        sub, payment_method=PaymentMethod(MethodType.CARD, "ok")
    )
    run(billing.work_once())
    keys = [call.idempotency_key for call in billing.gateway.calls]
    assert len(keys) == 2 and keys[0] != keys[1]  # an unreachable attempt is followed by a new key
    assert billing.tables.invoices[billing.invoice_of(sub)].status is InvoiceStatus.PAID
    finished = run(billing.runs.get(started.run_id))
    assert (finished.state, finished.counts.charged) == (RunState.COMPLETED, 1)
    assert len(billing.events_of(ev.RunCompleted)) == 1


def test_starting_the_same_days_run_again_queues_no_occurrence_twice() -> None:
    billing = Billing()
    run(billing.subscribe())
    first = run(billing.runs.start(TODAY, RunKind.MONTHLY, wait=timedelta(0)))
    again = run(billing.runs.start(TODAY, RunKind.MONTHLY, wait=timedelta(0)))
    assert first is not None and again is not None
    assert first.run_id == again.run_id
    assert len(billing.tables.items) == 1
    assert len(billing.events_of(ev.RunStarted)) == 1


def test_a_gateway_unreachable_in_a_row_halts_its_part_of_the_run_and_resume_sends_it_again() -> None:
    billing = Billing(halt_threshold=2)
    subs = [run(billing.subscribe("unreachable")) for _ in range(2)]
    run_id = run(billing.bill_today())
    halted = run(billing.runs.get(run_id))
    assert (halted.state, halted.halted_gateways) == (RunState.HALTED, ("sandbox-card",))
    (event,) = billing.events_of(ev.RunHalted)
    assert isinstance(event, ev.RunHalted) and event.deferred_items == 2
    for sub in subs:
        billing.tables.subscriptions[sub.subscription_id] = dataclasses.replace(
            billing.tables.subscriptions[sub.subscription_id],
            payment_method=PaymentMethod(MethodType.CARD, "ok"),
        )
    run(billing.runs.resume(run_id, "sandbox-card"))
    while run(billing.work_once()):
        pass
    assert run(billing.runs.get(run_id)).state is RunState.COMPLETED
    assert all(i.status is InvoiceStatus.PAID for i in billing.tables.invoices.values())
    assert len(billing.gateway.calls) == 4


def test_an_item_failing_on_our_side_is_parked_at_the_limit_and_counted_once() -> None:
    billing = Billing()
    run(billing.subscribe("broken"))
    started = run(billing.runs.start(TODAY, RunKind.MONTHLY, wait=timedelta(0)))
    assert started is not None
    for _ in range(RULES.max_failures + 2):
        run(billing.work_once())
        billing.clock.advance(timedelta(hours=1))
    (item,) = billing.tables.items.values()
    assert item.status is ItemStatus.PARKED
    assert len(billing.gateway.calls) == RULES.max_failures
    assert sum(billing.metrics.parked.values()) == 1


def test_watching_the_runs_reports_how_many_of_each_kind_are_stalled() -> None:
    billing = Billing()
    run(billing.subscribe("silent"))
    started = run(billing.runs.start(TODAY, RunKind.MONTHLY, wait=timedelta(0)))
    assert started is not None
    run(billing.runs.watch_progress())
    assert billing.metrics.stalled == {RunKind.DAILY: 0, RunKind.MONTHLY: 0}
    billing.clock.advance(timedelta(hours=1))
    run(billing.runs.watch_progress())
    assert billing.metrics.stalled == {RunKind.DAILY: 0, RunKind.MONTHLY: 1}


def test_usage_of_the_period_is_invoiced_in_arrears_with_one_quota_call_per_batch() -> None:
    billing = Billing()
    subs = [run(billing.subscribe()) for _ in range(2)]
    run(billing.bill_today())
    assert billing.quota.usage_calls == 0  # the first occurrence has no period behind it
    billing.quota.usage_of_period = PeriodUsage((UsageCharge("api_calls", 1200, "0.5", usd(600)),))
    billing.clock.set(START + timedelta(days=31))
    run(billing.bill_today())
    renewals = [i for i in billing.tables.invoices.values() if i.billing_date > TODAY]
    assert sorted(i.subscription_id for i in renewals) == sorted(s.subscription_id for s in subs)
    assert [i.total for i in renewals] == [usd(3600), usd(3600)]
    assert (billing.quota.usage_calls, len(billing.quota.periods_asked)) == (1, 2)


def test_an_add_on_held_part_of_the_period_is_billed_on_the_renewal_for_the_days_it_was_held() -> None:
    billing = Billing()
    sub = run(billing.subscribe())
    run(billing.bill_today())
    period = Period(TODAY, date(2026, 4, 10))  # 31 days behind the renewal's due date
    sso = AddOnUse("sso", "SSO", usd(3100), period, Period(date(2026, 3, 25), period.end))
    billing.quota.usage_of_period = PeriodUsage(add_ons=(sso,))
    billing.clock.set(START + timedelta(days=31))
    run(billing.bill_today())
    renewal = max(billing.tables.invoices.values(), key=lambda i: i.billing_date)
    assert renewal.subscription_id == sub.subscription_id
    assert [(line.kind, line.description, line.amount) for line in renewal.lines] == [
        (LineKind.BASE, "basic (monthly)", usd(3000)),
        (LineKind.ADD_ON, "Add-on: SSO (16 of 31 days)", usd(1600)),
    ]
    assert renewal.status is InvoiceStatus.PAID
    assert [call.amount for call in billing.gateway.calls] == [usd(3000), usd(4600)]
    assert billing.balance("revenue") == -7600
    assert billing.balance(ledger.cash("sandbox-card")) == 7600


# ------------------------------------------------------------------ invoices


def failed_invoice(billing: Billing) -> tuple[Subscription, str]:
    sub = run(billing.subscribe("decline"))
    run(billing.bill_today())
    return sub, billing.invoice_of(sub)


def test_a_retry_after_a_new_card_pays_the_invoice_and_the_same_key_never_charges_again() -> None:
    billing = Billing()
    sub, invoice_id = failed_invoice(billing)
    changes = Changes(frozenset({"payment_method"}), payment_method=PaymentMethod(MethodType.CARD, "ok"))
    run(
        billing.subscriptions.update(
            sub.subscription_id, changes, billing.key("UpdateSubscription"), OPERATOR
        )
    )
    txn_id, replayed = run(billing.invoices.retry_payment(invoice_id, "case_1:2"))
    (txn,) = [t for t in billing.tables.attempts[invoice_id] if t.transaction_id == txn_id]
    assert (billing.tables.invoices[invoice_id].status, txn.attempt, replayed) == (
        InvoiceStatus.PAID,
        2,
        False,
    )
    assert run(billing.invoices.retry_payment(invoice_id, "case_1:2")) == (txn_id, True)
    assert len(billing.gateway.calls) == 2
    assert billing.tables.subscriptions[sub.subscription_id].status is SubscriptionStatus.ACTIVE
    assert billing.balance(ledger.receivable("acct_1")) == 0


def test_a_retry_of_a_paid_invoice_is_refused_and_writes_nothing() -> None:
    billing = Billing()
    sub = run(billing.subscribe())
    run(billing.bill_today())
    invoice_id = billing.invoice_of(sub)
    unchanged_by(billing, lambda: billing.invoices.retry_payment(invoice_id, "case_1:1"), FailedPrecondition)
    assert len(billing.gateway.calls) == 1


def test_voiding_a_failed_invoice_takes_back_revenue_and_receivable() -> None:
    billing = Billing()
    _, invoice_id = failed_invoice(billing)
    run(billing.invoices.void(invoice_id, "goodwill", billing.key("VoidInvoice")))
    assert billing.tables.invoices[invoice_id].status is InvoiceStatus.VOID
    assert billing.balance(ledger.receivable("acct_1")) == 0
    (event,) = billing.events_of(ev.InvoiceVoided)
    assert isinstance(event, ev.InvoiceVoided) and event.reason == "goodwill"


def test_credit_granted_once_per_key_pays_the_next_invoice_before_the_card() -> None:
    billing = Billing()
    key = billing.key("AddAccountCredit")
    for _ in range(2):
        available = run(billing.invoices.add_credit("acct_1", usd(1000), "apology", key))
    assert available == usd(1000)
    sub = run(billing.subscribe())
    run(billing.bill_today())
    invoice = billing.tables.invoices[billing.invoice_of(sub)]
    assert (invoice.credit_applied, invoice.amount_due, invoice.status) == (
        usd(1000),
        usd(2000),
        InvoiceStatus.PAID,
    )
    assert [call.amount for call in billing.gateway.calls] == [usd(2000)]
    assert billing.tables.credit("acct_1", USD) == usd(0)


def test_a_partial_refund_reaches_the_invoice_and_the_cash_account() -> None:
    billing = Billing()
    sub = run(billing.subscribe())
    run(billing.bill_today())
    invoice_id = billing.invoice_of(sub)
    (payment,) = billing.tables.attempts[invoice_id]
    result = ChargeResult(payment.payment_id, PaymentStatus.SUCCEEDED, "sandbox-card")

    async def refunded(total: int) -> None:
        async with billing.store.inbox() as conn:
            update = PaymentUpdate(payment.payment_id, payment.idempotency_key, result)
            await billing.invoices.on_payment_refunded(conn, update, "re_1", usd(total))

    run(refunded(1200))
    run(refunded(1200))  # heard twice
    assert billing.tables.invoices[invoice_id].refunded == usd(1200)
    assert billing.balance(ledger.cash("sandbox-card")) == 1800


def test_dunning_exhausted_writes_the_invoice_off_and_suspends_by_default() -> None:
    billing = Billing()
    sub, invoice_id = failed_invoice(billing)

    async def exhausted() -> None:
        async with billing.store.inbox() as conn:
            await billing.invoices.on_dunning_exhausted(conn, invoice_id, None, "evt_1")

    run(exhausted())
    assert billing.tables.invoices[invoice_id].status is InvoiceStatus.UNCOLLECTIBLE
    assert billing.tables.subscriptions[sub.subscription_id].status is SubscriptionStatus.SUSPENDED
    assert billing.balance(ledger.receivable("acct_1")) == 0
