"""Settlement: what billing due occurrences and settling charge answers change, decided from the
books alone.

`bill` decides, for a list of due occurrences, what is invoiced, skipped or charged; `settle`
decides, for a list of charge answers, how invoices, subscriptions and the ledger move. A run's
batch passes N; a dunning retry, a payment event or a test-clock day passes one, through the same
functions. Each returns a `Change` that one applicator writes set-wise in one transaction. Within a
list, what one occurrence changes (a renewed subscription, credit spent, an invoice paid) is what
the next one sees, so deciding N at once equals deciding them one after another.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from billing_common.errors import FailedPrecondition, Violations, existing
from billing_common.money import Money
from billing_common.payments import FailureType
from billing_common.subscriptions import ExhaustedAction, Frequency, SubscriptionStatus
from recurring.domain import events as ev
from recurring.domain import ledger
from recurring.domain.addons import add_on_lines
from recurring.domain.invoicing import Invoice, InvoiceDecision, PeriodUsage, Transaction, build_invoice
from recurring.domain.payments import (
    REASON_LENGTH,
    ChargeRequest,
    ChargeResult,
    NoAnswer,
    Outcome,
    PaymentStatus,
    attempt_key,
    final_word_applies,
    outcome_of,
    past_due_after,
)
from recurring.domain.proration import ProrationLine
from recurring.domain.runs import AfterFailure, ItemResult, ItemStatus, WorkItem, after_failure
from recurring.domain.schedule import period_starting
from recurring.domain.status import BILLABLE, Action, InvoiceStatus, can, invoice_transition
from recurring.domain.subscription import (
    Cause,
    HistoryEntry,
    Subscription,
    cancelled,
    history_entry,
    renew,
    skip_occurrence,
)
from recurring.domain.usage import Usages

BILLING = Cause("billing")
# An open proration of a subscription: its id, description and amount (negative: a credit).
Proration = tuple[int, str, Money]
# Makes a new id with the given prefix ("inv", "txn").
NewId = Callable[[str], str]
NO_USAGE = PeriodUsage()


@dataclass(frozen=True)
class Books:
    """What the books hold now about the subscriptions, invoices and accounts a list touches."""

    subscriptions: Mapping[str, Subscription]
    invoices: Mapping[str, Invoice]  # by invoice id
    attempts: Mapping[str, Sequence[Transaction]]  # by invoice id, in attempt order
    prorations: Mapping[str, Sequence[Proration]] = field(default_factory=dict)  # open, by subscription
    credits: Mapping[tuple[str, str], Money] = field(default_factory=dict)  # by (account, currency)
    unpaid: Mapping[str, int] = field(default_factory=dict)  # open or failed invoices, by subscription


@dataclass(frozen=True)
class Rules:
    """The merchant-wide settings billing decides by."""

    minimum_charge_minor: int
    max_failures: int
    defer_delay: timedelta
    # A gateway's part of a run halts after this many unreachable answers in a row.
    halt_threshold: int


@dataclass(frozen=True)
class Answer:
    """A charge attempt's answer to settle; `item` is the run item waiting on it, if any, and
    `holds` whether this claim still holds that item (a lease taken over keeps its new owner)."""

    attempt: Transaction
    result: ChargeResult | NoAnswer
    item: WorkItem | None = None
    holds: bool = False
    # A payment.* event's final word on an attempt answered as pending or unknown, or unanswered.
    final_word: bool = False


@dataclass(frozen=True)
class Charge:
    """An attempt written and ready to send, with the subscription whose payment method it uses."""

    item: WorkItem
    attempt: Transaction
    subscription: Subscription


@dataclass(frozen=True)
class Announced:
    """An event, and the run item whose charge announced it (its trace records the event)."""

    event: ev.Event
    item_id: int | None = None


@dataclass
class Change:
    """Everything one decision writes; the applicator writes it set-wise in one transaction."""

    invoices: dict[str, Invoice] = field(default_factory=dict)  # new, in their final state
    prorations: dict[str, list[int]] = field(default_factory=dict)  # attached, by invoice id
    # Lines a subscription's change leaves for its next invoice, by subscription id.
    new_prorations: dict[str, list[ProrationLine]] = field(default_factory=dict)
    attempts: list[Transaction] = field(default_factory=list)  # new, written before they are sent
    answered: dict[str, Transaction] = field(default_factory=dict)  # by transaction id
    statuses: dict[str, tuple[InvoiceStatus, datetime | None]] = field(default_factory=dict)
    refunded: dict[str, int] = field(default_factory=dict)  # new refunded totals, by invoice id
    postings: list[ledger.Posting] = field(default_factory=list)
    subscriptions: dict[str, Subscription] = field(default_factory=dict)
    history: list[HistoryEntry] = field(default_factory=list)
    events: list[Announced] = field(default_factory=list)
    finished: list[ItemResult] = field(default_factory=list)
    deferred: list[tuple[WorkItem, timedelta, str]] = field(default_factory=list)
    failures: list[tuple[WorkItem, AfterFailure, str]] = field(default_factory=list)
    charges: list[Charge] = field(default_factory=list)
    # What each answered charge of a run item came to (outages are counted on these).
    outcomes: list[tuple[WorkItem, Outcome]] = field(default_factory=list)


class _Working:
    """The books as the list so far left them."""

    def __init__(self, books: Books, change: Change, now: datetime) -> None:
        self.subscriptions = dict(books.subscriptions)
        self.invoices = dict(books.invoices)
        self.by_occurrence = {invoice.occurrence_key: invoice for invoice in books.invoices.values()}
        self.attempts = {invoice_id: list(found) for invoice_id, found in books.attempts.items()}
        self.prorations = {sid: list(found) for sid, found in books.prorations.items()}
        self.credits = dict(books.credits)
        self.unpaid = dict(books.unpaid)
        self.change = change
        self.now = now

    def put_invoice(self, invoice: Invoice, *, new: bool = False) -> None:
        self.invoices[invoice.invoice_id] = invoice
        self.by_occurrence[invoice.occurrence_key] = invoice
        if new or invoice.invoice_id in self.change.invoices:
            self.change.invoices[invoice.invoice_id] = invoice
            return
        _, paid_at = self.change.statuses.get(invoice.invoice_id, (invoice.status, None))
        self.change.statuses[invoice.invoice_id] = (invoice.status, paid_at or invoice.paid_at)

    def put_attempt(self, attempt: Transaction, *, new: bool = False) -> None:
        found = self.attempts.setdefault(attempt.invoice_id, [])
        for index, earlier in enumerate(found):
            if earlier.transaction_id == attempt.transaction_id:
                found[index] = attempt
                break
        else:
            found.append(attempt)
        if new:
            self.change.attempts.append(attempt)
        else:
            self.change.answered[attempt.transaction_id] = attempt

    def attempt(self, invoice_id: str, transaction_id: str) -> Transaction:
        return next(t for t in self.attempts.get(invoice_id, ()) if t.transaction_id == transaction_id)

    def save(self, before: Subscription, after: Subscription, cause: Cause) -> None:
        """Store a subscription's change with the fields that changed in its history."""
        entry = history_entry(before, after, cause, self.now)
        if entry is None:
            return
        self.subscriptions[after.subscription_id] = after
        self.change.subscriptions[after.subscription_id] = after
        self.change.history.append(entry)

    def announce(self, event: ev.Event, item: WorkItem | None) -> None:
        self.change.events.append(Announced(event, item.item_id if item is not None else None))

    def unpaid_changes(self, subscription_id: str, by: int) -> None:
        self.unpaid[subscription_id] = self.unpaid.get(subscription_id, 0) + by


# ------------------------------------------------------------------ billing due occurrences


def bill(
    items: Sequence[WorkItem],
    usages: Usages,
    books: Books,
    rules: Rules,
    now: datetime,
    new_id: NewId,
) -> Change:
    """Invoice each held occurrence once (base + usage + add-ons + proration - credit) and write the
    attempt to send; skip the ones not to bill, moving their subscription past them. An item whose
    tries ran out is parked instead. `usages` is what quota reports of the period behind each item's
    due date: an item whose usage quota could not give now waits, one whose usage failed counts a
    failure of ours."""
    change = Change()
    working = _Working(books, change, now)
    for item in items:
        if (parked := worn_out(item, rules)) is not None:
            change.failures.append(parked)
        elif item.item_id in usages.waiting:
            change.deferred.append((item, *usages.waiting[item.item_id]))
        elif item.item_id in usages.failed:
            error = usages.failed[item.item_id]
            change.failures.append(failure_of(item, f"usage: {type(error).__name__}: {error}", rules))
        else:
            _bill_one(working, item, usages.found.get(item.item_id, NO_USAGE), rules, new_id)
    return change


def _bill_one(working: _Working, item: WorkItem, usage: PeriodUsage, rules: Rules, new_id: NewId) -> None:
    change = working.change
    sub = working.subscriptions[item.subscription_id]
    invoice = working.by_occurrence.get(item.occurrence_key)
    if invoice is None:
        reason = _not_billed(working, sub, item)
        if reason:
            change.finished.append(ItemResult(item, ItemStatus.SKIPPED, reason))
            return
        invoice, decision = _open_invoice(working, sub, item, usage, rules, new_id)
        if decision is InvoiceDecision.BELOW_MINIMUM:
            detail = "below the minimum amount: carried to the next invoice"
            change.finished.append(ItemResult(item, ItemStatus.SKIPPED, detail, invoice.invoice_id))
            return
    if invoice.status is InvoiceStatus.PAID:
        change.finished.append(ItemResult(item, ItemStatus.CHARGED, "paid", invoice.invoice_id))
        return
    if invoice.status is not InvoiceStatus.OPEN:
        change.finished.append(ItemResult(item, ItemStatus.FAILED, invoice.status.value, invoice.invoice_id))
        return
    attempts = working.attempts.get(invoice.invoice_id, [])
    last = attempts[-1] if attempts else None
    if last is not None and not last.answered:
        change.charges.append(Charge(item, last, working.subscriptions[sub.subscription_id]))
        return
    if last is not None and awaiting_result(last):
        detail = "awaiting the final outcome"
        change.finished.append(ItemResult(item, ItemStatus.CHARGED, detail, invoice.invoice_id))
        return
    attempt = next_attempt(invoice, attempts, working.now, new_id)
    working.put_attempt(attempt, new=True)
    change.charges.append(Charge(item, attempt, working.subscriptions[sub.subscription_id]))


def _not_billed(working: _Working, sub: Subscription, item: WorkItem) -> str:
    """Why this occurrence is not billed (moving the subscription past it), or "" to bill it."""
    now = working.now
    if sub.next_billing_date != item.due_date:
        return "no longer due on this date"
    if sub.cancel_at_period_end:
        ended = cancelled(sub, now)
        working.save(sub, ended, BILLING)
        working.announce(ev.SubscriptionCancelled(ended, at_period_end=True), item)
        return "cancelled at the end of its period"
    if sub.status in (SubscriptionStatus.PAUSED, SubscriptionStatus.SUSPENDED):
        working.save(sub, skip_occurrence(sub, item.due_date, now), BILLING)
        return str(sub.status.value)
    if sub.status not in BILLABLE:
        return str(sub.status.value)
    return ""


def _open_invoice(
    working: _Working,
    sub: Subscription,
    item: WorkItem,
    usage: PeriodUsage,
    rules: Rules,
    new_id: NewId,
) -> tuple[Invoice, InvoiceDecision]:
    """The occurrence's invoice, opened with its ledger posting and the subscription renewed; settled
    at once when credit covers it, or when what is due is under the minimum (carried to the next)."""
    now = working.now
    currency = sub.amount.currency
    credit_key = (sub.account_id, currency)
    prorations = working.prorations.get(sub.subscription_id, [])
    draft = build_invoice(
        sub.amount,
        f"{sub.plan_code or 'Subscription'} ({sub.frequency.value})",
        [u for u in usage.charges if u.amount.currency == currency],
        [(text, amount) for _, text, amount in prorations],
        working.credits.get(credit_key, Money(0, currency)),
        Money(rules.minimum_charge_minor, currency),
        add_on_lines([a for a in usage.add_ons if a.price.currency == currency]),
    )
    period = period_starting(sub.frequency, item.due_date, sub.anchor_day)
    invoice = Invoice(
        invoice_id=new_id("inv"),
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
    working.put_invoice(invoice, new=True)
    working.unpaid_changes(sub.subscription_id, 1)
    working.change.prorations[invoice.invoice_id] = [pid for pid, _, _ in prorations]
    working.prorations[sub.subscription_id] = []
    if draft.total.amount_minor or draft.credit_applied.amount_minor:
        working.change.postings.append(
            ledger.invoice_posting(sub.account_id, invoice.invoice_id, draft.total, draft.credit_applied)
        )
    # Credit applied is spent; a negative total (a large downgrade credit) becomes credit; an amount
    # due under the minimum is carried in the balance, as negative credit.
    left = working.credits.get(credit_key, Money(0, currency)) - draft.credit_applied
    working.credits[credit_key] = left + Money(max(0, -draft.total.amount_minor), currency)
    renewed = renew(sub, item.due_date, now)
    working.save(sub, renewed, BILLING)
    working.announce(ev.SubscriptionRenewed(renewed), item)
    working.announce(ev.InvoiceCreated(invoice), item)
    if draft.decision is InvoiceDecision.BELOW_MINIMUM:
        working.change.postings.append(
            ledger.carry_posting(sub.account_id, invoice.invoice_id, draft.amount_due)
        )
        working.credits[credit_key] = working.credits[credit_key] - draft.amount_due
    if draft.decision in (InvoiceDecision.PAID_BY_CREDIT, InvoiceDecision.BELOW_MINIMUM):
        _mark_paid(working, invoice, None, BILLING, item)
    return working.invoices[invoice.invoice_id], draft.decision


def charge_request(attempt: Transaction, sub: Subscription) -> ChargeRequest:
    """What gateway-adapter is asked to charge: the attempt's amount under its key, with the merchant
    and payment method it routes and paces by.

    Exactly once: the attempt is written (unanswered, with its key) before it is sent. Whoever finds
    it still unanswered sends the same key again, and gateway-adapter answers a repeated key with the
    stored result, so a crash or a race never charges twice. Only an answered GATEWAY_UNREACHABLE
    attempt (nothing happened) is followed by a new attempt and key."""
    method = sub.payment_method
    return ChargeRequest(
        merchant_id=sub.merchant_id,
        method_type=method.type,
        token=method.token,
        amount=attempt.amount,
        idempotency_key=attempt.idempotency_key,
        invoice_id=attempt.invoice_id,
    )


def next_attempt(
    invoice: Invoice,
    attempts: Sequence[Transaction],
    now: datetime,
    new_id: NewId,
    retry_key: str | None = None,
) -> Transaction:
    """The row of the invoice's next charge attempt, written before the charge is sent."""
    number = len(attempts) + 1
    return Transaction(
        transaction_id=new_id("txn"),
        invoice_id=invoice.invoice_id,
        attempt=number,
        idempotency_key=attempt_key(invoice.invoice_id, number),
        retry_key=retry_key,
        amount=invoice.amount_due,
        created_at=now,
    )


def check_retry(invoice_id: str, retry_key: str) -> None:
    """A retry names its invoice and its key (dunning's "<case id>:<attempt>")."""
    violations = Violations()
    violations.check(bool(invoice_id), "invoice_id", "required")
    violations.check(bool(retry_key), "idempotency_key", "required")
    violations.raise_if_any()


@dataclass(frozen=True)
class Retrying:
    """What a retry sends: the attempt, and whether it was answered before (`replayed`: nothing is
    charged again); `change` writes a new attempt before it is sent."""

    attempt: Transaction
    replayed: bool = False
    change: Change = field(default_factory=Change)


def retry(
    earlier: Transaction | None,
    invoice: Invoice,
    attempts: Sequence[Transaction],
    retry_key: str,
    now: datetime,
    new_id: NewId,
) -> Retrying:
    """Dunning's charge of the invoice under its key. The attempt the key made before is sent again
    (answered: replayed), a key made for another invoice is refused; a new attempt is refused while
    the invoice cannot be charged."""
    if earlier is not None:
        if earlier.invoice_id != invoice.invoice_id:
            raise FailedPrecondition(f"idempotency key {retry_key!r} was used for another invoice")
        return Retrying(earlier, replayed=earlier.answered)
    refusal = retry_refusal(invoice, attempts)
    if refusal:
        raise FailedPrecondition(refusal)
    attempt = next_attempt(invoice, attempts, now, new_id, retry_key=retry_key)
    return Retrying(attempt, change=Change(attempts=[attempt]))


def retry_refusal(invoice: Invoice, attempts: Sequence[Transaction]) -> str:
    """Why a new charge of the invoice is refused now, or "" to charge it again."""
    if invoice.status not in (InvoiceStatus.OPEN, InvoiceStatus.PAYMENT_FAILED):
        return f"the invoice is {invoice.status.value}"
    if attempts and (not attempts[-1].answered or awaiting_result(attempts[-1])):
        return "a charge of this invoice is still waiting for its outcome"
    return ""


# ------------------------------------------------------------------ settling charge answers


def settle(answers: Sequence[Answer], books: Books, rules: Rules, cause: Cause, now: datetime) -> Change:
    """Apply each answer once: the attempt as answered, the invoice paid or failed, the
    subscription's payment state, the ledger, and what becomes of the run item waiting on it.

    No answer means nothing is known: the item sends the same key again later (after the retry-after
    of back-pressure; counted as a failure of ours when our side broke), and nothing else changes.
    An answer names the gateway that routing chose: the item is kept under it from then on."""
    change = Change()
    working = _Working(books, change, now)
    for answer in answers:
        item, result = answer.item, answer.result
        if isinstance(result, NoAnswer):
            if item is not None and answer.holds and result.retry_after is not None:
                change.deferred.append((item, result.retry_after, result.reason))
            elif item is not None and answer.holds and result.ours:
                change.failures.append(failure_of(item, result.reason, rules))
            elif item is not None and answer.holds:
                change.deferred.append((item, rules.defer_delay, result.reason))
            continue
        if item is not None and result.gateway:
            # The item waits, halts and resumes with the gateway that routing chose for it.
            item = dataclasses.replace(item, gateway=result.gateway)
        outcome = _record(working, answer, result, cause) or outcome_of(result)
        if item is None:
            continue
        if answer.holds:
            if outcome is Outcome.DEFERRED:
                change.deferred.append((item, rules.defer_delay, "gateway unreachable"))
            else:
                status = ItemStatus.FAILED if outcome is Outcome.FAILED else ItemStatus.CHARGED
                failure = result.reason or result.decline_code
                detail = failure if outcome is Outcome.FAILED else outcome.value
                change.finished.append(ItemResult(item, status, detail, answer.attempt.invoice_id))
        change.outcomes.append((item, outcome))
    return change


def _record(working: _Working, answer: Answer, result: ChargeResult, cause: Cause) -> Outcome | None:
    """Apply a charge result once; None when it changes nothing (another worker recorded this
    attempt, or a final word that does not apply)."""
    attempt = answer.attempt
    current = working.attempt(attempt.invoice_id, attempt.transaction_id)
    if answer.final_word:
        if not final_word_applies(current.answered, awaiting_result(current), result):
            return None
    elif current.answered:
        return None
    invoice = existing(working.invoices, attempt.invoice_id, "invoice")
    answered = answered_attempt(current, result)
    working.put_attempt(answered)
    outcome = outcome_of(result)
    if outcome is Outcome.PAID:
        _mark_paid(working, invoice, answered, cause, answer.item)
    elif outcome is Outcome.FAILED:
        _mark_failed(working, invoice, answered, cause, answer.item)
    elif outcome is Outcome.DEFERRED and (answered.retry_key is not None or answer.final_word):
        # Nothing reached the gateway, and no run item waits for this attempt any more (a dunning
        # retry, or an unknown outcome found later to be "never received"): dunning takes it on.
        _mark_failed(working, invoice, answered, cause, answer.item)
    return outcome


def settle_return(
    attempt: Transaction, result: ChargeResult, books: Books, cause: Cause, now: datetime
) -> Change:
    """An ACH debit came back: the attempt is returned, the cash leaves again (if the invoice was
    paid), and the invoice goes to dunning. A return seen before changes nothing."""
    change = Change()
    if attempt.status is PaymentStatus.RETURNED:
        return change
    working = _Working(books, change, now)
    invoice = existing(working.invoices, attempt.invoice_id, "invoice")
    returned = dataclasses.replace(
        attempt,
        status=PaymentStatus.RETURNED,
        payment_id=attempt.payment_id or result.payment_id,
        failure_type=FailureType.CARDHOLDER,
        decline_kind=result.decline_kind,
        decline_code=result.decline_code,
        retryable=result.retryable,
    )
    working.put_attempt(returned)
    if invoice.status is InvoiceStatus.PAID:
        gateway = attempt.gateway or result.gateway or "unknown"
        change.postings.append(
            ledger.return_posting(invoice.account_id, attempt.transaction_id, gateway, attempt.amount)
        )
    if invoice.status in (InvoiceStatus.PAID, InvoiceStatus.OPEN, InvoiceStatus.PAYMENT_FAILED):
        _mark_failed(working, invoice, returned, cause, None)
    return change


def void(invoice_id: str, books: Books, reason: str, now: datetime) -> Change:
    """Void an unpaid invoice whose charges have all come to an end: revenue, receivable and applied
    credit go back."""
    invoice = existing(books.invoices, invoice_id, "invoice")
    attempts = books.attempts.get(invoice_id, [])
    invoice_transition(invoice.status, InvoiceStatus.VOID)
    if attempts and (not attempts[-1].answered or awaiting_result(attempts[-1])):
        raise FailedPrecondition("a charge of this invoice is still waiting for its outcome")
    change = Change()
    working = _Working(books, change, now)
    voided = dataclasses.replace(invoice, status=InvoiceStatus.VOID)
    working.put_invoice(voided)
    posting = ledger.void_posting(
        invoice.account_id, invoice.invoice_id, invoice.amount_due, invoice.credit_applied
    )
    if posting is not None:
        change.postings.append(posting)
    working.announce(ev.InvoiceVoided(voided, reason), None)
    return change


@dataclass(frozen=True)
class ExhaustionPolicy:
    """What dunning.exhausted does to the subscription when the event names no action: the default,
    except for the merchants listed, which cancel."""

    default: ExhaustedAction
    cancel_merchants: frozenset[str]

    def cancels(self, merchant_id: str, action: ExhaustedAction | None) -> bool:
        if action is not None:
            return action is ExhaustedAction.CANCEL
        return self.default is ExhaustedAction.CANCEL or merchant_id in self.cancel_merchants


def write_off(
    invoice_id: str,
    books: Books,
    policy: ExhaustionPolicy,
    action: ExhaustedAction | None,
    cause: Cause,
    now: datetime,
) -> Change:
    """Dunning ran out of attempts: the unpaid invoice is written off, and the subscription is
    cancelled or suspended (the event's `action`, else the merchant's policy). An invoice that is not
    recurring's changes nothing."""
    change = Change()
    invoice = books.invoices.get(invoice_id)
    if invoice is None:
        return change
    sub = books.subscriptions.get(invoice.subscription_id)
    working = _Working(books, change, now)
    if invoice.status in (InvoiceStatus.OPEN, InvoiceStatus.PAYMENT_FAILED):
        invoice_transition(invoice.status, InvoiceStatus.UNCOLLECTIBLE)
        written_off = dataclasses.replace(invoice, status=InvoiceStatus.UNCOLLECTIBLE)
        working.put_invoice(written_off)
        if invoice.amount_due.amount_minor:
            change.postings.append(
                ledger.write_off_posting(invoice.account_id, invoice.invoice_id, invoice.amount_due)
            )
        working.announce(ev.InvoiceUncollectible(written_off), None)
    if sub is None:
        return change
    if policy.cancels(sub.merchant_id, action):
        if can(sub.status, Action.CANCEL):
            ended = cancelled(sub, now)
            working.save(sub, ended, cause)
            working.announce(ev.SubscriptionCancelled(ended, at_period_end=False), None)
    elif can(sub.status, Action.SUSPEND):
        _move(working, sub, Action.SUSPEND, ev.SubscriptionSuspended, cause, None)
    return change


def settle_refund(attempt: Transaction, refund_id: str, refunded_total: Money, books: Books) -> Change:
    """The gateway gave back part or all of a payment: the cash leaves, revenue is reduced, and the
    invoice records the total refunded. `refunded_total` is the payment's total so far, so a refund
    heard twice, or after a later one, changes nothing."""
    change = Change()
    invoice = existing(books.invoices, attempt.invoice_id, "invoice")
    more = refunded_total.amount_minor - invoice.refunded_minor
    if more <= 0 or refunded_total.currency != invoice.total.currency:
        return change
    change.refunded[invoice.invoice_id] = refunded_total.amount_minor
    amount = Money(more, refunded_total.currency)
    reference = f"refund:{refund_id}"
    change.postings.append(ledger.refund_posting(invoice.account_id, reference, attempt.gateway, amount))
    return change


def _mark_paid(
    working: _Working, invoice: Invoice, attempt: Transaction | None, cause: Cause, item: WorkItem | None
) -> None:
    """`attempt` is the payment; None when account credit paid the whole invoice, or its amount due
    (under the minimum) was carried to the next one."""
    if invoice.status is InvoiceStatus.PAID:
        return
    invoice_transition(invoice.status, InvoiceStatus.PAID)
    paid = dataclasses.replace(invoice, status=InvoiceStatus.PAID, paid_at=working.now)
    working.put_invoice(paid)
    working.unpaid_changes(invoice.subscription_id, -1)
    if attempt is not None and attempt.amount.amount_minor:
        working.change.postings.append(
            ledger.payment_posting(
                invoice.account_id, attempt.transaction_id, attempt.gateway or "unknown", attempt.amount
            )
        )
    working.announce(ev.InvoicePaid(paid, attempt), item)
    _after_paid(working, invoice.subscription_id, cause, item)


def _after_paid(working: _Working, subscription_id: str, cause: Cause, item: WorkItem | None) -> None:
    """A one-time subscription completes; a trial or past-due one becomes active."""
    sub = working.subscriptions.get(subscription_id)
    if sub is None:
        return
    if sub.frequency is Frequency.ONE_TIME and can(sub.status, Action.COMPLETE):
        _move(working, sub, Action.COMPLETE, ev.SubscriptionCompleted, cause, item)
    elif sub.status is SubscriptionStatus.TRIALING:
        _move(working, sub, Action.ACTIVATE, ev.SubscriptionActivated, cause, item)
    elif can(sub.status, Action.PAYMENT_RECOVERED) and working.unpaid.get(subscription_id, 0) == 0:
        _move(working, sub, Action.PAYMENT_RECOVERED, ev.SubscriptionActivated, cause, item)


def _mark_failed(
    working: _Working, invoice: Invoice, attempt: Transaction, cause: Cause, item: WorkItem | None
) -> None:
    """The invoice waits for dunning: it hears invoice.payment_failed and retries (or, for a
    merchant failure, holds the invoice for an operator)."""
    failed = invoice
    if invoice.status is not InvoiceStatus.PAYMENT_FAILED:
        invoice_transition(invoice.status, InvoiceStatus.PAYMENT_FAILED)
        failed = dataclasses.replace(invoice, status=InvoiceStatus.PAYMENT_FAILED)
        working.put_invoice(failed)
        if invoice.status is InvoiceStatus.PAID:
            working.unpaid_changes(invoice.subscription_id, 1)
    working.announce(ev.InvoicePaymentFailed(failed, attempt), item)
    sub = working.subscriptions.get(invoice.subscription_id)
    if (
        sub is not None
        and past_due_after(attempt.failure_type)
        and sub.status is not SubscriptionStatus.PAST_DUE
        and can(sub.status, Action.PAYMENT_FAILED)
    ):
        _move(working, sub, Action.PAYMENT_FAILED, ev.SubscriptionPastDue, cause, item)


def _move(
    working: _Working,
    sub: Subscription,
    action: Action,
    event: type[ev.SubscriptionEvent],
    cause: Cause,
    item: WorkItem | None,
) -> None:
    updated = sub.apply(action, working.now)
    working.save(sub, updated, cause)
    working.announce(event(updated), item)


def awaiting_result(attempt: Transaction) -> bool:
    """Answered, but the final word comes later (ACH pending, or an unknown outcome)."""
    return attempt.answered and attempt.status in (PaymentStatus.PENDING, PaymentStatus.UNKNOWN)


def answered_attempt(attempt: Transaction, result: ChargeResult) -> Transaction:
    """The attempt as the gateway answered it."""
    return dataclasses.replace(
        attempt,
        status=result.status,
        payment_id=result.payment_id,
        gateway=result.gateway,
        failure_type=result.failure_type,
        decline_kind=result.decline_kind,
        decline_code=result.decline_code,
        retryable=result.retryable,
    )


def failure_of(item: WorkItem, reason: str, rules: Rules) -> tuple[WorkItem, AfterFailure, str]:
    """A try of the item that failed for a reason of ours: parked at the limit, else tried later."""
    return (
        item,
        after_failure(item.failures + 1, rules.max_failures, rules.defer_delay),
        reason[:REASON_LENGTH],
    )


def worn_out(item: WorkItem, rules: Rules) -> tuple[WorkItem, AfterFailure, str] | None:
    """A claimed item whose tries ran out without an outcome (a worker that stopped holding one
    counts at the claim) is parked, not worked: how, and why."""
    after = after_failure(item.failures, rules.max_failures, rules.defer_delay)
    if not (item.failures and after.park):
        return None
    last = item.detail or "its worker stopped holding it"
    reason = f"{item.failures} tries ended without an outcome; last: {last}"
    return item, after, reason[:REASON_LENGTH]
