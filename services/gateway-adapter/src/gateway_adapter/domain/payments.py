"""Payments, their states and the rules for charging, replaying and refunding them."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from enum import StrEnum

from billing_common.errors import FailedPrecondition, KeyReused, Violations
from billing_common.money import Money
from billing_common.pan import contains_card_number
from billing_common.payments import DeclineKind, FailureType, MethodType
from gateway_adapter.domain.classification import Classification


class Lane(StrEnum):
    """Which share of a gateway's rate limit a charge draws on: interactive first, batch after."""

    INTERACTIVE = "INTERACTIVE"
    BATCH = "BATCH"


class Status(StrEnum):
    # Internal: a call holds the idempotency key and is talking to the gateway right now.
    PROCESSING = "PROCESSING"
    SUCCEEDED = "SUCCEEDED"
    DECLINED = "DECLINED"
    PENDING = "PENDING"
    UNKNOWN = "UNKNOWN"
    FAILED = "FAILED"
    SETTLED = "SETTLED"
    RETURNED = "RETURNED"
    PARTIALLY_REFUNDED = "PARTIALLY_REFUNDED"
    REFUNDED = "REFUNDED"


# Where a payment may go next. Webhooks arrive out of order and twice; anything else is ignored.
TRANSITIONS: Mapping[Status, frozenset[Status]] = {
    Status.PROCESSING: frozenset(
        {Status.SUCCEEDED, Status.DECLINED, Status.PENDING, Status.UNKNOWN, Status.FAILED}
    ),
    # FAILED means the gateway never had it (unreachable, circuit open): the same key may try again.
    Status.FAILED: frozenset({Status.PROCESSING}),
    Status.UNKNOWN: frozenset({Status.SUCCEEDED, Status.DECLINED, Status.PENDING, Status.FAILED}),
    Status.PENDING: frozenset({Status.SETTLED, Status.RETURNED, Status.SUCCEEDED, Status.DECLINED}),
    Status.SETTLED: frozenset({Status.RETURNED, Status.PARTIALLY_REFUNDED, Status.REFUNDED}),
    Status.SUCCEEDED: frozenset({Status.PARTIALLY_REFUNDED, Status.REFUNDED}),
    Status.PARTIALLY_REFUNDED: frozenset({Status.PARTIALLY_REFUNDED, Status.REFUNDED}),
    Status.DECLINED: frozenset(),
    Status.RETURNED: frozenset(),
    Status.REFUNDED: frozenset(),
}
REFUNDABLE = frozenset({Status.SUCCEEDED, Status.SETTLED, Status.PARTIALLY_REFUNDED})
# Payments whose outcome the janitor must find out from the gateway.
UNRESOLVED = frozenset({Status.PROCESSING, Status.UNKNOWN})

MAX_KEY_LENGTH = 255


def can_move(current: Status, target: Status) -> bool:
    return target in TRANSITIONS[current]


class PaymentEvent(StrEnum):
    """What a payment's change tells the rest of the platform; adapters turn these into payment.* events."""

    SUCCEEDED = "payment.succeeded"
    FAILED = "payment.failed"
    PENDING = "payment.pending"
    SETTLED = "payment.settled"
    RETURNED = "payment.returned"
    REFUNDED = "payment.refunded"
    RECONCILED = "payment.reconciled"


# A charge's answer announces its outcome; an unknown one announces nothing until it is found out.
_CHARGE_EVENTS: Mapping[Status, PaymentEvent] = {
    Status.SUCCEEDED: PaymentEvent.SUCCEEDED,
    Status.PENDING: PaymentEvent.PENDING,
    Status.DECLINED: PaymentEvent.FAILED,
    Status.FAILED: PaymentEvent.FAILED,
}


def charge_event(status: Status) -> PaymentEvent | None:
    """What a charge answered by the gateway (or not) announces; None while its outcome is unknown."""
    return _CHARGE_EVENTS.get(status)


def news_event(previous: Status, target: Status) -> PaymentEvent:
    """What the gateway's later word (a webhook, or the janitor's look-up) moving a payment from
    `previous` to `target` announces: a settlement or return as such, an outcome nobody knew yet as a
    reconciliation, else the outcome."""
    if target is Status.SETTLED:
        return PaymentEvent.SETTLED
    if target is Status.RETURNED:
        return PaymentEvent.RETURNED
    if previous in UNRESOLVED:
        return PaymentEvent.RECONCILED
    return PaymentEvent.SUCCEEDED if target is Status.SUCCEEDED else PaymentEvent.FAILED


@dataclass(frozen=True)
class ChargeRequest:
    merchant_id: str
    method_type: MethodType
    token: str
    amount: Money
    idempotency_key: str
    caller_reference: str = ""
    metadata: Mapping[str, str] = field(default_factory=dict)

    def fingerprint(self) -> str:
        """What must match for a replay: Stripe compares the parameters of the original request."""
        amount = self.amount
        # The method by its name (CARD), as keys claimed before the enum was shared were fingerprinted.
        method = self.method_type.name
        parts = (self.merchant_id, method, self.token, str(amount.amount_minor), amount.currency)
        return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()


def validate_charge(request: ChargeRequest) -> None:
    problems = Violations()
    problems.check(bool(request.merchant_id.strip()), "merchant_id", "is required")
    problems.check(bool(request.token.strip()), "payment_method.gateway_token", "is required")
    problems.check(
        not contains_card_number(request.token),
        "payment_method.gateway_token",
        "must be a gateway token, never a card number",
    )
    problems.check(request.amount.amount_minor > 0, "amount.amount_minor", "must be greater than zero")
    _check_key(problems, request.idempotency_key)
    problems.check(
        not contains_card_number(request.caller_reference),
        "caller_reference",
        "must not contain a card number",
    )
    for index, (key, value) in enumerate(sorted(request.metadata.items())):
        problems.check(
            not contains_card_number(key) and not contains_card_number(value),
            f"metadata[{index}]",
            "must not contain a card number",
        )
    problems.raise_if_any()


def _check_key(problems: Violations, key: str) -> None:
    problems.check(bool(key.strip()), "idempotency_key", "is required")
    problems.check(
        len(key) <= MAX_KEY_LENGTH, "idempotency_key", f"must be at most {MAX_KEY_LENGTH} characters"
    )


@dataclass(frozen=True)
class Payment:
    payment_id: str
    request: ChargeRequest
    fingerprint: str
    gateway: str
    status: Status
    classification: Classification | None
    gateway_code: str
    gateway_message: str
    gateway_reference: str
    refunded: Money
    created_at: datetime
    updated_at: datetime
    checks_done: int = 0

    @property
    def failure_type(self) -> FailureType:
        return self.classification.failure_type if self.classification else FailureType.UNKNOWN_OUTCOME

    @property
    def decline_kind(self) -> DeclineKind:
        return self.classification.decline_kind if self.classification else DeclineKind.NONE

    @property
    def retryable(self) -> bool:
        return self.classification.retryable if self.classification else False

    @property
    def normalized_code(self) -> str:
        return self.classification.normalized_code if self.classification else "in_progress"

    @property
    def refundable(self) -> Money:
        if self.status not in REFUNDABLE:
            return Money.zero(self.request.amount.currency)
        return self.request.amount - self.refunded

    def replay_of(self, request: ChargeRequest) -> None:
        """Refuse a key reused for a different charge, naming what differs."""
        if self.fingerprint == request.fingerprint():
            return
        differs = [
            name
            for name, ours, theirs in (
                ("merchant_id", self.request.merchant_id, request.merchant_id),
                (
                    "payment_method",
                    (self.request.method_type, self.request.token),
                    (request.method_type, request.token),
                ),
                ("amount", self.request.amount.amount_minor, request.amount.amount_minor),
                ("currency", self.request.amount.currency, request.amount.currency),
            )
            if ours != theirs
        ]
        raise KeyReused(request.idempotency_key, "charge", differs)


def status_for(classification: Classification, *, pending: bool = False) -> Status:
    """The payment state a classified gateway answer leaves the payment in."""
    if classification.failure_type is FailureType.NONE:
        return Status.PENDING if pending else Status.SUCCEEDED
    if classification.failure_type is FailureType.UNKNOWN_OUTCOME:
        return Status.UNKNOWN
    if classification.failure_type is FailureType.GATEWAY_UNREACHABLE:
        return Status.FAILED
    return Status.DECLINED


@dataclass(frozen=True)
class RefundRequest:
    payment_id: str
    amount: Money | None  # None: everything that is left
    idempotency_key: str
    reason: str = ""

    def fingerprint(self) -> str:
        amount_minor = None if self.amount is None else self.amount.amount_minor
        return hashlib.sha256(f"{self.payment_id}\x1f{amount_minor}".encode()).hexdigest()


def validate_refund(request: RefundRequest) -> None:
    problems = Violations()
    problems.check(bool(request.payment_id.strip()), "payment_id", "is required")
    problems.check(
        request.amount is None or request.amount.amount_minor > 0,
        "amount.amount_minor",
        "must be greater than zero",
    )
    _check_key(problems, request.idempotency_key)
    problems.raise_if_any()


def refund_amount(payment: Payment, request: RefundRequest, claimed_minor: int = 0) -> Money:
    """How much to refund: never more than what is left once the refunds already claimed (asked of the
    gateway, not yet recorded) are counted, in the payment's currency."""
    currency = payment.request.amount.currency
    if request.amount is not None and request.amount.currency != currency:
        raise FailedPrecondition(f"the payment is in {currency}, not {request.amount.currency}")
    if payment.status not in REFUNDABLE:
        raise FailedPrecondition(f"a {payment.status} payment cannot be refunded")
    left = max(payment.refundable - Money(claimed_minor, currency), Money.zero(currency))
    amount = left if request.amount is None else request.amount
    if amount > left:
        raise FailedPrecondition(
            f"refund of {amount.amount_minor} exceeds the {left.amount_minor} left to refund"
        )
    return amount


def after_refund(payment: Payment, amount: Money, now: datetime) -> Payment:
    refunded = payment.refunded + amount
    status = Status.REFUNDED if refunded == payment.request.amount else Status.PARTIALLY_REFUNDED
    return replace(payment, refunded=refunded, status=status, updated_at=now)


def next_check_at(schedule: Sequence[timedelta], checks_done: int, now: datetime) -> datetime:
    """When to ask the gateway again about an unknown outcome: the schedule, then its last step forever."""
    step = schedule[min(checks_done, len(schedule) - 1)]
    return now + step
