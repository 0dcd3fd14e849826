"""Settlement: billing N due occurrences at once writes exactly what billing them one after another
writes (invoices, attempts, postings, subscription states, events, item outcomes), and so does
settling N charge answers; read and written through the one applicator on in-memory books."""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import itertools
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from billing_common.money import Money
from billing_common.payments import DeclineKind, FailureType, MethodType
from billing_common.subscriptions import Frequency, SubscriptionStatus
from recurring.app.settling import apply, books_for_invoices, books_for_items
from recurring.domain import ledger
from recurring.domain.events import SubscriptionActivated
from recurring.domain.invoicing import AddOnUse, Invoice, PeriodUsage, Transaction, UsageCharge
from recurring.domain.payments import ChargeResult, NoAnswer, Outcome, PaymentStatus
from recurring.domain.runs import ItemStatus, WorkItem
from recurring.domain.schedule import Period
from recurring.domain.settlement import BILLING, Answer, Change, Charge, Rules, bill, settle, settle_refund
from recurring.domain.status import BILLABLE, InvoiceStatus
from recurring.domain.subscription import PaymentMethod, Subscription
from recurring.domain.usage import Usages
from services.recurring.tests.fakes import FakeUnitOfWork, Proration, Tables

NOW = datetime(2026, 3, 2, 3, 6, tzinfo=UTC)
DUE = date(2026, 3, 1)
USD = "USD"
RULES = Rules(minimum_charge_minor=50, max_failures=3, defer_delay=timedelta(minutes=1), halt_threshold=5)
S = SubscriptionStatus
# The period whose usage and add-ons the invoice due on DUE bills (February 2026: 28 days).
USAGE_PERIOD = Period(date(2026, 2, 1), DUE)


def usd(minor: int) -> Money:
    return Money(minor, USD)


def ids() -> Callable[[str], str]:
    counter = itertools.count()
    return lambda prefix: f"{prefix}_{next(counter)}"


@dataclass(frozen=True)
class SubSpec:
    account: int
    status: SubscriptionStatus
    amount: int
    one_time: bool
    due: bool
    cancel_at_end: bool
    prorations: tuple[int, ...]
    usage: tuple[int, ...]
    earlier: str  # "none", "open", "paid", "failed": an invoice of this occurrence already written
    attempt: str  # "none", "unanswered", "awaiting", "declined": its last attempt
    older_unpaid: bool
    # Add-ons held in the period behind the due date: (price, first day held, day removed).
    add_ons: tuple[tuple[int, int, int], ...] = ()


SUB_SPECS = st.builds(
    SubSpec,
    account=st.integers(0, 2),
    status=st.sampled_from([S.TRIALING, S.ACTIVE, S.ACTIVE, S.PAST_DUE, S.PAUSED, S.SUSPENDED, S.CANCELLED]),
    amount=st.integers(0, 6000),
    one_time=st.booleans(),
    due=st.booleans() | st.just(True),
    cancel_at_end=st.sampled_from([False, False, False, True]),
    prorations=st.lists(st.integers(-4000, 3000), max_size=2).map(tuple),
    usage=st.lists(st.integers(0, 900), max_size=2).map(tuple),
    earlier=st.sampled_from(["none", "none", "none", "open", "paid", "failed"]),
    attempt=st.sampled_from(["none", "unanswered", "awaiting", "declined"]),
    older_unpaid=st.booleans(),
    add_ons=st.lists(st.tuples(st.integers(0, 5000), st.integers(0, 28), st.integers(0, 28)), max_size=2).map(
        tuple
    ),
)
RESULTS = st.sampled_from(["paid", "soft", "hard", "merchant", "unreachable", "pending", "lost", "broken"])


def subscription(index: int, spec: SubSpec) -> Subscription:
    ended = spec.status is S.CANCELLED
    return Subscription(
        subscription_id=f"sub_{index}",
        account_id=f"acct_{spec.account}",
        merchant_id="merchant",
        status=spec.status,
        plan_code="pro",
        plan_version=1,
        amount=usd(spec.amount),
        frequency=Frequency.ONE_TIME if spec.one_time else Frequency.MONTHLY,
        start_date=date(2026, 1, 1),
        anchor_day=1,
        payment_method=PaymentMethod(MethodType.CARD, "tok_visa"),
        trial_days=0,
        trial_end=None,
        current_period_start=date(2026, 2, 1),
        current_period_end=DUE,
        # A cancelled subscription has nothing due; only a billable one can end at its period's end.
        next_billing_date=None if ended else DUE if spec.due else date(2026, 4, 1),
        tier_mapped=False,
        cancel_at_period_end=spec.cancel_at_end and spec.status in BILLABLE,
        version=1,
        created_at=NOW - timedelta(days=60),
        updated_at=NOW - timedelta(days=60),
    )


def invoice_of(sub: Subscription, key: str, status: InvoiceStatus, invoice_id: str) -> Invoice:
    return Invoice(
        invoice_id=invoice_id,
        subscription_id=sub.subscription_id,
        account_id=sub.account_id,
        merchant_id=sub.merchant_id,
        occurrence_key=key,
        status=status,
        billing_date=DUE,
        period_start=DUE,
        period_end=date(2026, 4, 1),
        total=sub.amount,
        credit_applied=usd(0),
        amount_due=sub.amount,
        created_at=NOW - timedelta(hours=1),
    )


def attempt_of(invoice: Invoice, kind: str) -> Transaction:
    answered = {
        "unanswered": {},
        "awaiting": {"status": PaymentStatus.PENDING, "payment_id": "pay_pending", "gateway": "sandbox-ach"},
        "declined": {
            "status": PaymentStatus.DECLINED,
            "payment_id": "pay_declined",
            "gateway": "sandbox-card",
        },
    }[kind]
    return Transaction(
        transaction_id=f"txn_old_{invoice.invoice_id}",
        invoice_id=invoice.invoice_id,
        attempt=1,
        idempotency_key=f"{invoice.invoice_id}:1",
        retry_key=None,
        amount=invoice.amount_due,
        created_at=NOW - timedelta(hours=1),
        **answered,  # type: ignore[arg-type]
    )


def books_of(
    specs: list[SubSpec], credits: list[int]
) -> tuple[Tables, list[WorkItem], dict[int, PeriodUsage]]:
    books = Tables()
    for account, credit in enumerate(credits):
        if credit:
            books.postings.append(ledger.credit_posting(f"acct_{account}", f"credit:{account}", usd(credit)))
    items, usage = [], {}
    proration_ids = itertools.count(1)
    for index, spec in enumerate(specs):
        sub = subscription(index, spec)
        books.subscriptions[sub.subscription_id] = sub
        key = f"{sub.subscription_id}:{DUE.isoformat()}"
        item = WorkItem(index, "run_1", sub.subscription_id, DUE, key, "sandbox-card", f"claim_{index}")
        items.append(item)
        usage[index] = PeriodUsage(
            tuple(
                UsageCharge(f"api_calls_{n}", n + 1, "0.01", usd(amount))
                for n, amount in enumerate(spec.usage)
            ),
            tuple(
                AddOnUse(
                    f"addon_{n}",
                    f"Add-on {n}",
                    usd(price),
                    USAGE_PERIOD,
                    Period(
                        USAGE_PERIOD.start + timedelta(days=first), USAGE_PERIOD.start + timedelta(days=last)
                    ),
                )
                for n, (price, first, last) in enumerate(spec.add_ons)
            ),
        )
        for amount in spec.prorations:
            books.prorations.append(
                Proration(next(proration_ids), sub.subscription_id, "Proration", usd(amount))
            )
        if spec.earlier != "none":
            status = {
                "open": InvoiceStatus.OPEN,
                "paid": InvoiceStatus.PAID,
                "failed": InvoiceStatus.PAYMENT_FAILED,
            }
            invoice = invoice_of(sub, key, status[spec.earlier], f"inv_old_{index}")
            books.invoices[invoice.invoice_id] = invoice
            if spec.attempt != "none":
                books.attempts[invoice.invoice_id] = [attempt_of(invoice, spec.attempt)]
        if spec.older_unpaid:
            older = invoice_of(
                sub, f"{sub.subscription_id}:older", InvoiceStatus.PAYMENT_FAILED, f"inv_older_{index}"
            )
            books.invoices[older.invoice_id] = older
    books.claim(items)
    return books, items, usage


def result_of(kind: str, txn: Transaction) -> ChargeResult | NoAnswer:
    pay = f"pay_{txn.transaction_id}"
    match kind:
        case "paid":
            return ChargeResult(pay, PaymentStatus.SUCCEEDED, "sandbox-card")
        case "soft":
            return ChargeResult(
                pay,
                PaymentStatus.DECLINED,
                "sandbox-card",
                FailureType.CARDHOLDER,
                DeclineKind.SOFT,
                "do_not_honor",
            )
        case "hard":
            return ChargeResult(
                pay,
                PaymentStatus.DECLINED,
                "sandbox-card",
                FailureType.CARDHOLDER,
                DeclineKind.HARD,
                "stolen_card",
            )
        case "merchant":
            return ChargeResult(
                pay, PaymentStatus.FAILED, "sandbox-card", FailureType.MERCHANT, decline_code="bad_key"
            )
        case "unreachable":
            return ChargeResult("", PaymentStatus.FAILED, "sandbox-card", FailureType.GATEWAY_UNREACHABLE)
        case "pending":
            return ChargeResult(pay, PaymentStatus.PENDING, "sandbox-ach")
        case "lost":
            return NoAnswer("UNAVAILABLE", "connection refused", ours=False)
        case _:
            return NoAnswer("INTERNAL", "boom", ours=True)


async def bill_and_settle(
    books: Tables,
    items: list[WorkItem],
    usage: dict[int, PeriodUsage],
    results: list[str],
    at_once: bool,
) -> Tables:
    new_id = ids()
    uow = FakeUnitOfWork(books)
    lists = [items] if at_once else [[item] for item in items]
    charges = []
    for part in lists:
        held = await uow.items.held(part)
        part = [item for item in part if item.item_id in held]
        change = bill(part, Usages(found=usage), await books_for_items(uow, part), RULES, NOW, new_id)
        await apply(uow, change, NOW)
        charges += change.charges
    answers = [
        Answer(c.attempt, result_of(results[c.item.item_id % len(results)], c.attempt), c.item, True)
        for c in charges
    ]
    for part_answers in [answers] if at_once else [[a] for a in answers]:
        invoice_ids = [a.attempt.invoice_id for a in part_answers]
        change = settle(part_answers, await books_for_invoices(uow, invoice_ids), RULES, BILLING, NOW)
        await apply(uow, change, NOW)
    return books


@settings(max_examples=60, deadline=None)
@given(
    st.lists(SUB_SPECS, min_size=1, max_size=6),
    st.lists(st.integers(0, 5000), min_size=3, max_size=3),
    st.lists(RESULTS, min_size=1, max_size=6),
)
def test_billing_and_settling_n_occurrences_at_once_equals_one_after_another(
    specs: list[SubSpec], credits: list[int], results: list[str]
) -> None:
    books, items, usage = books_of(specs, credits)
    at_once = asyncio.run(bill_and_settle(copy.deepcopy(books), items, usage, results, at_once=True))
    one_by_one = asyncio.run(bill_and_settle(copy.deepcopy(books), items, usage, results, at_once=False))
    assert at_once.invoices == one_by_one.invoices
    assert at_once.attempts == one_by_one.attempts
    assert at_once.postings == one_by_one.postings
    assert at_once.subscriptions == one_by_one.subscriptions
    assert at_once.history == one_by_one.history
    assert at_once.events == one_by_one.events
    assert at_once.items == one_by_one.items
    assert at_once.prorations == one_by_one.prorations
    for account in range(3):
        # Credit goes below zero only by a carried amount due, which is under the minimum (the next
        # invoice takes the whole carried balance).
        assert at_once.credit(f"acct_{account}", USD).amount_minor > -RULES.minimum_charge_minor


def test_credit_of_one_account_pays_its_first_invoice_and_the_rest_goes_to_the_second() -> None:
    specs = [SubSpec(0, S.ACTIVE, 3000, False, True, False, (), (), "none", "none", False)] * 2
    books, items, usage = books_of(specs, [4000, 0, 0])
    asyncio.run(bill_and_settle(books, items, usage, ["paid"], at_once=True))
    first, second = (books.invoices[f"inv_{n}"] for n in (0, 1))
    assert (first.credit_applied, first.amount_due, first.status) == (usd(3000), usd(0), InvoiceStatus.PAID)
    assert (second.credit_applied, second.amount_due, second.status) == (
        usd(1000),
        usd(2000),
        InvoiceStatus.PAID,
    )
    assert books.credit("acct_0", USD) == usd(0)


def test_a_past_due_subscription_recovers_only_when_no_other_invoice_is_unpaid() -> None:
    alone = SubSpec(0, S.PAST_DUE, 3000, False, True, False, (), (), "none", "none", False)
    books, items, usage = books_of([alone, dataclasses.replace(alone, older_unpaid=True)], [0, 0, 0])
    asyncio.run(bill_and_settle(books, items, usage, ["paid"], at_once=True))
    assert books.subscriptions["sub_0"].status is S.ACTIVE
    assert books.subscriptions["sub_1"].status is S.PAST_DUE
    activated = [e.subscription.subscription_id for e in books.events if isinstance(e, SubscriptionActivated)]
    assert activated == ["sub_0"]


def test_an_answer_lost_on_our_side_counts_a_failure_and_changes_no_invoice() -> None:
    spec = SubSpec(0, S.ACTIVE, 3000, False, True, False, (), (), "none", "none", False)
    books, items, usage = books_of([spec], [0, 0, 0])
    asyncio.run(bill_and_settle(books, items, usage, ["broken"], at_once=True))
    assert books.items[0].status is ItemStatus.DEFERRED
    assert books.items[0].failures == 1
    assert books.invoices["inv_0"].status is InvoiceStatus.OPEN
    assert [t.answered for t in books.attempts["inv_0"]] == [False]


def balance_of(books: Tables, account: str) -> int:
    return sum(e.amount.amount_minor for p in books.postings for e in p.entries if e.account == account)


def test_a_partial_then_a_full_refund_reach_the_invoice_and_the_ledger_once_each() -> None:
    spec = SubSpec(0, S.ACTIVE, 3000, False, True, False, (), (), "none", "none", False)
    books, items, usage = books_of([spec], [0, 0, 0])
    asyncio.run(bill_and_settle(books, items, usage, ["paid"], at_once=True))
    (payment,) = books.attempts["inv_0"]

    async def refunded(refund_id: str, total: int) -> None:
        uow = FakeUnitOfWork(books)
        found = await books_for_invoices(uow, ["inv_0"])
        await apply(uow, settle_refund(payment, refund_id, usd(total), found), NOW)

    asyncio.run(refunded("re_1", 1000))
    assert books.invoices["inv_0"].refunded == usd(1000)
    assert balance_of(books, "cash:sandbox-card") == 2000
    asyncio.run(refunded("re_1", 1000))  # heard again
    asyncio.run(refunded("re_2", 3000))
    asyncio.run(refunded("re_1", 1000))  # heard late, after the later refund
    assert books.invoices["inv_0"].refunded == usd(3000)
    assert balance_of(books, "cash:sandbox-card") == 0
    assert balance_of(books, "revenue") == 0
    refunds = [p for p in books.postings if p.kind is ledger.PostingKind.REFUND]
    assert [(p.reference, p.entries[0].amount.amount_minor) for p in refunds] == [
        ("refund:re_1", 1000),
        ("refund:re_2", 2000),
    ]


def test_add_ons_are_lines_of_the_invoice_and_in_its_total_and_the_ledger() -> None:
    base = SubSpec(0, S.ACTIVE, 3000, False, True, False, (-500,), (250,), "none", "none", False)
    # One held all February, one from the 15th, one added and removed on the 8th.
    spec = dataclasses.replace(base, add_ons=((2800, 0, 28), (2800, 14, 28), (1000, 7, 7)))
    books, items, usage = books_of([spec], [400, 0, 0])
    asyncio.run(bill_and_settle(books, items, usage, ["paid"], at_once=True))
    invoice = books.invoices["inv_0"]
    assert [(line.kind.value, line.description, line.amount.amount_minor) for line in invoice.lines] == [
        ("base", "pro (monthly)", 3000),
        ("usage", "Usage: api_calls_0", 250),
        ("add_on", "Add-on: Add-on 0", 2800),
        ("add_on", "Add-on: Add-on 1 (14 of 28 days)", 1400),
        ("proration", "Proration", -500),
        ("credit", "Account credit applied", -400),
    ]
    assert invoice.total == usd(3000 + 250 + 2800 + 1400 - 500)
    assert (invoice.credit_applied, invoice.amount_due) == (usd(400), usd(6950 - 400))
    assert balance_of(books, "revenue") == -6950
    assert balance_of(books, "cash:sandbox-card") == 6550
    assert balance_of(books, "receivable:acct_0") == 0
    assert all(ledger.is_balanced(posting.entries) for posting in books.postings)


def test_an_add_on_in_another_currency_than_the_subscription_is_not_billed() -> None:
    spec = SubSpec(0, S.ACTIVE, 3000, False, True, False, (), (), "none", "none", False)
    books, items, _ = books_of([spec], [0, 0, 0])
    euro = AddOnUse("sso", "SSO", Money(900, "EUR"), USAGE_PERIOD, USAGE_PERIOD)
    asyncio.run(bill_and_settle(books, items, {0: PeriodUsage(add_ons=(euro,))}, ["paid"], at_once=True))
    assert books.invoices["inv_0"].total == usd(3000)


def test_an_item_whose_usage_quota_could_not_give_waits_or_counts_a_failure_and_is_not_invoiced() -> None:
    spec = SubSpec(0, S.ACTIVE, 3000, False, True, False, (), (), "none", "none", False)
    books, items, _ = books_of(
        [spec, dataclasses.replace(spec, account=1), dataclasses.replace(spec, account=2)], [0]
    )
    usages = Usages(
        found={2: PeriodUsage()},
        waiting={0: (RULES.defer_delay, "usage unavailable: quota is down")},
        failed={1: RuntimeError("bad summary")},
    )

    change = bill(
        items, usages, asyncio.run(books_for_items(FakeUnitOfWork(books), items)), RULES, NOW, ids()
    )

    assert change.deferred == [(items[0], RULES.defer_delay, "usage unavailable: quota is down")]
    assert [(item, after.failures, reason) for item, after, reason in change.failures] == [
        (items[1], 1, "usage: RuntimeError: bad summary")
    ]
    assert [invoice.subscription_id for invoice in change.invoices.values()] == [items[2].subscription_id]
    assert [charge.item for charge in change.charges] == [items[2]]


def test_an_item_whose_tries_ran_out_without_an_outcome_is_parked_with_its_last_word_not_billed() -> None:
    spec = SubSpec(0, S.ACTIVE, 3000, False, True, False, (), (), "none", "none", False)
    books, items, usage = books_of([spec, dataclasses.replace(spec, account=1)], [0])
    worn = dataclasses.replace(items[0], failures=RULES.max_failures, detail="charging: TimeoutError")
    tried = dataclasses.replace(items[1], failures=RULES.max_failures - 1)

    found = asyncio.run(books_for_items(FakeUnitOfWork(books), [worn, tried]))
    change = bill([worn, tried], Usages(found=usage), found, RULES, NOW, ids())

    assert [(item, after.park, reason) for item, after, reason in change.failures] == [
        (worn, True, "3 tries ended without an outcome; last: charging: TimeoutError")
    ]
    assert [charge.item for charge in change.charges] == [tried]


def billed_charge(books: Tables, items: list[WorkItem], usage: dict[int, PeriodUsage]) -> Charge:
    uow = FakeUnitOfWork(books)
    change = bill(items, Usages(found=usage), asyncio.run(books_for_items(uow, items)), RULES, NOW, ids())
    asyncio.run(apply(uow, change, NOW))
    (charge,) = change.charges
    return charge


def settled(books: Tables, charge: Charge, result: ChargeResult | NoAnswer) -> Change:
    uow = FakeUnitOfWork(books)
    found = asyncio.run(books_for_invoices(uow, [charge.attempt.invoice_id]))
    change = settle([Answer(charge.attempt, result, charge.item, True)], found, RULES, BILLING, NOW)
    asyncio.run(apply(uow, change, NOW))
    return change


def test_back_pressure_lets_the_item_wait_its_retry_after_and_is_neither_a_failure_nor_an_outage() -> None:
    spec = SubSpec(0, S.ACTIVE, 3000, False, True, False, (), (), "none", "none", False)
    books, items, usage = books_of([spec], [0, 0, 0])
    charge = billed_charge(books, items, usage)
    wait = timedelta(seconds=7)

    change = settled(books, charge, NoAnswer("UNAVAILABLE", "rate limit taken", ours=False, retry_after=wait))

    assert [(item.item_id, delay) for item, delay, _ in change.deferred] == [(0, wait)]
    assert change.failures == [] and change.outcomes == []  # outages are counted on outcomes
    assert (books.items[0].status, books.items[0].failures) == (ItemStatus.DEFERRED, 0)
    assert books.invoices["inv_0"].status is InvoiceStatus.OPEN
    assert [t.answered for t in books.attempts["inv_0"]] == [False]  # the same key goes again


def test_an_item_waits_under_the_gateway_its_answer_names_not_the_one_it_was_queued_with() -> None:
    spec = SubSpec(0, S.ACTIVE, 3000, False, True, False, (), (), "none", "none", False)
    books, items, usage = books_of([spec], [0, 0, 0])
    unrouted = [dataclasses.replace(item, gateway="") for item in items]
    books.claim(unrouted)
    charge = billed_charge(books, unrouted, usage)

    unreachable = ChargeResult("", PaymentStatus.FAILED, "stripe", FailureType.GATEWAY_UNREACHABLE)
    change = settled(books, charge, unreachable)

    assert [(item.gateway, outcome) for item, outcome in change.outcomes] == [("stripe", Outcome.DEFERRED)]
    assert books.items[0].item.gateway == "stripe"
    assert books.items[0].status is ItemStatus.DEFERRED
