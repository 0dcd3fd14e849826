"""Invoices and their charge attempts; building an invoice for one due occurrence: base, usage,
add-ons, proration, then account credit."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from enum import StrEnum

from billing_common.money import Money
from billing_common.payments import DeclineKind, FailureType
from recurring.domain.payments import PaymentStatus
from recurring.domain.schedule import Period
from recurring.domain.status import InvoiceStatus


class LineKind(StrEnum):
    BASE = "base"
    USAGE = "usage"
    ADD_ON = "add_on"
    PRORATION = "proration"
    CREDIT = "credit"
    # An earlier invoice's amount due under the minimum, carried in the account's balance to this one.
    CARRIED_BALANCE = "carried_balance"


@dataclass(frozen=True)
class InvoiceLine:
    kind: LineKind
    description: str
    amount: Money
    quantity: int = 1
    # Exact decimal text of the unit price in major units (usage lines); empty otherwise.
    unit_price: str = ""


@dataclass(frozen=True)
class UsageCharge:
    key: str
    billable_quantity: int
    unit_price: str
    amount: Money


@dataclass(frozen=True)
class AddOnUse:
    """A stretch in which the tenant held an add-on: the days [held.start, held.end) of the `period`
    whose usage the invoice bills. `price` is the add-on's price for a whole period."""

    code: str
    name: str
    price: Money
    period: Period
    held: Period


@dataclass(frozen=True)
class PeriodUsage:
    """What quota reports of the period behind a due date: its priced usage and the add-ons held."""

    charges: tuple[UsageCharge, ...] = ()
    add_ons: tuple[AddOnUse, ...] = ()


class InvoiceDecision(StrEnum):
    CHARGE = "charge"
    # Fully paid by account credit: nothing to charge.
    PAID_BY_CREDIT = "paid_by_credit"
    # Under the minimum amount: invoiced and settled by carrying the amount due in the account's
    # balance, which the next invoice adds (nothing is charged now, nothing is given away).
    BELOW_MINIMUM = "below_minimum"


@dataclass(frozen=True)
class InvoiceDraft:
    lines: tuple[InvoiceLine, ...]
    total: Money  # before credit
    credit_applied: Money
    amount_due: Money
    decision: InvoiceDecision


def build_invoice(
    base: Money,
    base_description: str,
    usage: Sequence[UsageCharge],
    proration: Sequence[tuple[str, Money]],
    credit_available: Money,
    minimum: Money,
    add_ons: Sequence[tuple[str, Money]] = (),
) -> InvoiceDraft:
    """Lines sum to the total; credit covers at most the total; the rest is due.

    A negative `credit_available` is a balance an earlier invoice carried (it was under the minimum):
    it is added to what is due, unless this invoice is itself a credit, which nets against it in the
    account's balance. A positive amount due below `minimum` is not worth a charge (BELOW_MINIMUM).
    """
    currency = base.currency
    lines = [InvoiceLine(LineKind.BASE, base_description, base)]
    lines += [
        InvoiceLine(LineKind.USAGE, f"Usage: {u.key}", u.amount, u.billable_quantity, u.unit_price)
        for u in usage
        if u.amount.amount_minor
    ]
    lines += [InvoiceLine(LineKind.ADD_ON, text, amount) for text, amount in add_ons if amount.amount_minor]
    lines += [InvoiceLine(LineKind.PRORATION, text, amount) for text, amount in proration]
    total = Money(sum(line.amount.amount_minor for line in lines), currency)
    if credit_available.amount_minor >= 0:
        applied = max(0, min(credit_available.amount_minor, total.amount_minor))
    else:
        applied = credit_available.amount_minor if total.amount_minor >= 0 else 0
    credit = Money(applied, currency)
    if applied > 0:
        lines.append(InvoiceLine(LineKind.CREDIT, "Account credit applied", -credit))
    elif applied < 0:
        lines.append(InvoiceLine(LineKind.CARRIED_BALANCE, "Balance carried from earlier invoices", -credit))
    due = total - credit
    if due.amount_minor <= 0:
        decision = InvoiceDecision.PAID_BY_CREDIT
    elif due.amount_minor < minimum.amount_minor:
        decision = InvoiceDecision.BELOW_MINIMUM
    else:
        decision = InvoiceDecision.CHARGE
    return InvoiceDraft(tuple(lines), total, credit, Money(max(due.amount_minor, 0), currency), decision)


@dataclass(frozen=True)
class Invoice:
    invoice_id: str
    subscription_id: str
    account_id: str
    merchant_id: str
    occurrence_key: str
    status: InvoiceStatus
    billing_date: date
    period_start: date
    period_end: date
    total: Money
    credit_applied: Money
    amount_due: Money
    created_at: datetime
    paid_at: datetime | None = None
    lines: tuple[InvoiceLine, ...] = ()
    # Given back to the customer by refunds of its payment, in the invoice's currency.
    refunded_minor: int = 0

    @property
    def refunded(self) -> Money:
        return Money(self.refunded_minor, self.total.currency)


@dataclass(frozen=True)
class Transaction:
    transaction_id: str
    invoice_id: str
    attempt: int
    idempotency_key: str
    retry_key: str | None
    amount: Money
    created_at: datetime
    # PENDING with no payment id: sent (or about to be) and not answered; retried with the same key.
    status: PaymentStatus = PaymentStatus.PENDING
    payment_id: str = ""
    gateway: str = ""
    failure_type: FailureType = FailureType.NONE
    decline_kind: DeclineKind = DeclineKind.NONE
    decline_code: str = ""
    retryable: bool = False
    # The trace that wrote the attempt (empty until it is stored): a later send continues it.
    trace_context: Mapping[str, str] = field(default_factory=dict, compare=False)

    @property
    def answered(self) -> bool:
        return bool(self.payment_id) or self.status is not PaymentStatus.PENDING


@dataclass(frozen=True)
class InvoiceFilter:
    subscription_id: str = ""
    account_id: str = ""
    status: InvoiceStatus | None = None
