"""The double-entry billing ledger: every business fact is a balanced set of entries.

Sign convention: debits positive, credits negative; the entries of one posting sum to zero.
Accounts: `receivable:<account>` (what the customer owes), `credit:<account>` (the account's
balance: credit we owe the customer is negative, an amount carried to the next invoice positive),
`revenue`, `cash:<gateway>`, `bad_debt`, `credits_granted`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from billing_common.errors import Violations
from billing_common.money import Money


class PostingKind(StrEnum):
    INVOICE = "invoice"
    PAYMENT = "payment"
    REFUND = "refund"
    CREDIT = "credit"
    WRITE_OFF = "write_off"
    RETURN = "return"
    VOID = "void"
    CARRY = "carry"


@dataclass(frozen=True)
class Entry:
    account: str
    amount: Money


@dataclass(frozen=True)
class Posting:
    kind: PostingKind
    customer: str
    reference: str
    entries: tuple[Entry, ...]

    def __post_init__(self) -> None:
        if not is_balanced(self.entries):
            raise ValueError(f"unbalanced {self.kind.value} posting for {self.reference}")


@dataclass(frozen=True)
class LedgerLine:
    """One stored entry of a posting, as the ledger lists it."""

    entry_id: int
    ledger_transaction_id: str
    account: str
    amount: Money
    kind: str
    reference: str
    created_at: datetime


def is_balanced(entries: Iterable[Entry]) -> bool:
    items = list(entries)
    if not items or len({e.amount.currency for e in items}) != 1:
        return False
    return sum(e.amount.amount_minor for e in items) == 0


def receivable(customer: str) -> str:
    return f"receivable:{customer}"


def customer_credit(customer: str) -> str:
    return f"credit:{customer}"


def cash(gateway: str) -> str:
    return f"cash:{gateway or 'unknown'}"


def _pair(kind: PostingKind, customer: str, ref: str, debit: str, credit: str, amount: Money) -> Posting:
    return Posting(kind, customer, ref, (Entry(debit, amount), Entry(credit, -amount)))


def invoice_posting(customer: str, invoice_id: str, total: Money, credit_applied: Money) -> Posting:
    """The customer owes the total; applied credit moves from their credit to the receivable (a
    carried balance, applied as negative credit, moves back to the receivable the same way).

    A negative total (a downgrade's proration credit larger than the rest) becomes account credit.
    """
    entries = [Entry(receivable(customer), total), Entry("revenue", -total)]
    if credit_applied.amount_minor:
        entries += [
            Entry(customer_credit(customer), credit_applied),
            Entry(receivable(customer), -credit_applied),
        ]
    if total.is_negative():
        entries += [Entry(receivable(customer), -total), Entry(customer_credit(customer), total)]
    return Posting(PostingKind.INVOICE, customer, invoice_id, tuple(entries))


def carry_posting(customer: str, invoice_id: str, amount_due: Money) -> Posting:
    """An amount due under the minimum charge leaves the invoice for the account's balance (a debit
    in the credit account, which the next invoice applies back)."""
    return _pair(
        PostingKind.CARRY, customer, invoice_id, customer_credit(customer), receivable(customer), amount_due
    )


def void_posting(customer: str, invoice_id: str, amount_due: Money, credit_applied: Money) -> Posting | None:
    """Undo an unpaid invoice: revenue and receivable go back, applied credit returns to the customer.

    None when there is nothing to undo.
    """
    total = amount_due + credit_applied
    entries = (
        Entry("revenue", total),
        Entry(receivable(customer), -amount_due),
        Entry(customer_credit(customer), -credit_applied),
    )
    kept = tuple(e for e in entries if e.amount.amount_minor)
    return Posting(PostingKind.VOID, customer, invoice_id, kept) if kept else None


def payment_posting(customer: str, reference: str, gateway: str, amount: Money) -> Posting:
    return _pair(PostingKind.PAYMENT, customer, reference, cash(gateway), receivable(customer), amount)


def return_posting(customer: str, reference: str, gateway: str, amount: Money) -> Posting:
    """A returned debit: the cash goes back and the customer owes the amount again."""
    return _pair(PostingKind.RETURN, customer, reference, receivable(customer), cash(gateway), amount)


def refund_posting(customer: str, reference: str, gateway: str, amount: Money) -> Posting:
    return _pair(PostingKind.REFUND, customer, reference, "revenue", cash(gateway), amount)


def credit_posting(customer: str, reference: str, amount: Money) -> Posting:
    return _pair(
        PostingKind.CREDIT, customer, reference, "credits_granted", customer_credit(customer), amount
    )


def granted_credit(customer: str, key: str, reason: str, amount: Money) -> Posting:
    """Credit an operator grants under an idempotency key; the reason is kept in the reference."""
    return credit_posting(customer, f"credit:{key}" + (f" ({reason})" if reason else ""), amount)


def write_off_posting(customer: str, invoice_id: str, amount: Money) -> Posting:
    return _pair(PostingKind.WRITE_OFF, customer, invoice_id, "bad_debt", receivable(customer), amount)


def check_credit(customer: str, amount: Money | None, key: str) -> Money:
    """Credit is granted to a named customer, in a positive amount, once per idempotency key; the
    amount to grant."""
    violations = Violations()
    violations.check(bool(customer), "account_id", "required")
    violations.check(amount is not None and amount.amount_minor > 0, "amount", "must be positive")
    violations.check(bool(key), "idempotency_key", "required")
    violations.raise_if_any()
    assert amount is not None
    return amount


def check_account(customer: str, currency: str) -> None:
    """A customer's balance is read in one currency."""
    violations = Violations()
    violations.check(bool(customer), "account_id", "required")
    violations.check(bool(currency), "currency", "required")
    violations.raise_if_any()


def check_entries_of(customer: str) -> None:
    """Ledger entries are listed for one named customer, never for the whole ledger."""
    violations = Violations()
    violations.check(bool(customer), "account_id", "required")
    violations.raise_if_any()
