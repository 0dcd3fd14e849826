"""What a charge attempt came to, normalized the way gateway-adapter reports it."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from billing_common.money import Money


class PaymentStatus(enum.Enum):
    PENDING = "pending"  # recorded before the gateway answered, or ACH not yet settled
    SUCCEEDED = "succeeded"
    DECLINED = "declined"
    UNKNOWN = "unknown"
    FAILED = "failed"
    SETTLED = "settled"
    RETURNED = "returned"
    REFUNDED = "refunded"


class FailureType(enum.Enum):
    NONE = "none"
    CARDHOLDER = "cardholder"
    MERCHANT = "merchant"
    GATEWAY_UNREACHABLE = "gateway_unreachable"
    UNKNOWN_OUTCOME = "unknown_outcome"


class DeclineKind(enum.Enum):
    NONE = "none"
    SOFT = "soft"
    HARD = "hard"


@dataclass(frozen=True)
class ChargeRequest:
    merchant_id: str
    method_type: str
    token: str
    amount: Money
    idempotency_key: str
    invoice_id: str


@dataclass(frozen=True)
class ChargeResult:
    payment_id: str
    status: PaymentStatus
    gateway: str
    failure_type: FailureType = FailureType.NONE
    decline_kind: DeclineKind = DeclineKind.NONE
    decline_code: str = ""
    retryable: bool = False


class Outcome(enum.Enum):
    PAID = "paid"
    # Accepted, final word later (ACH pending, or a timeout whose outcome the gateway resolves).
    AWAITING = "awaiting"
    FAILED = "failed"
    # Nothing happened (gateway unreachable): try again later with a new attempt.
    DEFERRED = "deferred"


def outcome_of(result: ChargeResult) -> Outcome:
    if result.status in (PaymentStatus.SUCCEEDED, PaymentStatus.SETTLED):
        return Outcome.PAID
    if result.status in (PaymentStatus.PENDING, PaymentStatus.UNKNOWN):
        return Outcome.AWAITING
    if result.failure_type is FailureType.GATEWAY_UNREACHABLE:
        return Outcome.DEFERRED
    return Outcome.FAILED


# The gateway that serves each payment method type (gateway-adapter routes the same way); the
# run paces, counts outages and halts per gateway.
GATEWAY_BY_METHOD = {"card": "sandbox-card", "ach": "sandbox-ach", "stripe": "stripe"}


def gateway_for(method_type: str) -> str:
    return GATEWAY_BY_METHOD[method_type]


def attempt_key(invoice_id: str, attempt: int) -> str:
    """The charge's idempotency key: one per invoice and attempt, so a replay never charges twice."""
    return f"{invoice_id}:{attempt}"
