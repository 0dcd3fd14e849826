"""What a charge attempt came to, normalized the way gateway-adapter reports it."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum

from billing_common.money import Money
from billing_common.payments import DeclineKind, FailureType, MethodType


class PaymentStatus(StrEnum):
    PENDING = "pending"  # recorded before the gateway answered, or ACH not yet settled
    SUCCEEDED = "succeeded"
    DECLINED = "declined"
    UNKNOWN = "unknown"
    FAILED = "failed"
    SETTLED = "settled"
    RETURNED = "returned"
    REFUNDED = "refunded"


@dataclass(frozen=True)
class ChargeRequest:
    merchant_id: str
    method_type: MethodType
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
    # Why it failed, in words, for the work item (a refusal's code and message).
    reason: str = ""


@dataclass(frozen=True)
class PaymentUpdate:
    """What a payment.* event says about one of our charges."""

    payment_id: str
    idempotency_key: str
    result: ChargeResult


class Outcome(StrEnum):
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


def final_word_applies(answered: bool, awaiting: bool, result: ChargeResult) -> bool:
    """Whether gateway-adapter's final word (payment.settled / payment.reconciled) changes an attempt.

    An unanswered attempt is held by a run item or a dunning attempt that sends the same key
    again. "Never received" means our pod or database failed before the gateway had the charge,
    and gateway-adapter lets that key run again: the holder's next send decides, not the customer's
    failure. Any other final word is taken. An answered attempt changes only while it awaits its
    final word (ACH pending, a gateway timeout).
    """
    if not answered:
        return outcome_of(result) is not Outcome.DEFERRED
    return awaiting


def past_due_after(failure: FailureType) -> bool:
    """A failed payment makes the subscription past due, unless the failure is the merchant's
    (credentials, configuration, a request the payment service refused): the customer did nothing
    wrong, and dunning holds the invoice for an operator instead of retrying it on the customer."""
    return failure is not FailureType.MERCHANT


class CallFailure(StrEnum):
    """How a charge call failed without a payment in its answer."""

    # The payment service answered that it will not charge this request as sent (a card number as
    # token, an amount it does not take): sending it again changes nothing.
    REFUSED = "refused"
    # Nothing is known about the charge (the service or the network did not answer, or refused
    # us rather than the request): the same key goes again later.
    NO_ANSWER = "no_answer"
    # Our side broke on this call: the same key goes again later, and it counts as a failure of
    # ours towards parking the item.
    BROKEN = "broken"


# gRPC status code names; unlisted ones are BROKEN.
CALL_FAILURES: dict[str, CallFailure] = {
    "INVALID_ARGUMENT": CallFailure.REFUSED,
    "NOT_FOUND": CallFailure.REFUSED,
    "OUT_OF_RANGE": CallFailure.REFUSED,
    "ALREADY_EXISTS": CallFailure.REFUSED,
    "UNIMPLEMENTED": CallFailure.REFUSED,
    "UNAVAILABLE": CallFailure.NO_ANSWER,
    "DEADLINE_EXCEEDED": CallFailure.NO_ANSWER,
    "RESOURCE_EXHAUSTED": CallFailure.NO_ANSWER,
    "CANCELLED": CallFailure.NO_ANSWER,
    "ABORTED": CallFailure.NO_ANSWER,
    # Our credentials or grants, not the charge: every item would fail alike, so the run waits
    # (and is reported stalled) until the configuration is fixed, then goes on with the same keys.
    "UNAUTHENTICATED": CallFailure.NO_ANSWER,
    "PERMISSION_DENIED": CallFailure.NO_ANSWER,
    # The key's earlier charge conflicts with this request (it was sent with another payment method
    # since changed, or the key is being released): that charge may have gone through, so failing
    # the invoice would invite a second charge under a new key; ours to look into, parked in the end.
    "FAILED_PRECONDITION": CallFailure.BROKEN,
    "INTERNAL": CallFailure.BROKEN,
    "UNKNOWN": CallFailure.BROKEN,
    "DATA_LOSS": CallFailure.BROKEN,
}
REASON_LENGTH = 200


def call_failure(code: str) -> CallFailure:
    return CALL_FAILURES.get(code, CallFailure.BROKEN)


@dataclass(frozen=True)
class NoAnswer:
    """A charge call that came back without a word about the payment: the same key goes again."""

    code: str
    detail: str
    # Our side broke on it: counts as a failure of ours towards parking the item.
    ours: bool
    # Back-pressure (the gateway's rate limit is taken, or the key's call is still in progress):
    # nothing was done, and the same key is welcome again after this long. Neither the customer's
    # failure nor ours, nor a sign of an outage.
    retry_after: timedelta | None = None

    @property
    def reason(self) -> str:
        return f"no answer from the payment service ({self.code}): {self.detail}"[:REASON_LENGTH]


def refusal(code: str, detail: str) -> ChargeResult:
    """The payment service refused the request itself: no payment exists, and the invoice fails as
    the merchant's (or our configuration's) failure, never retried on the customer."""
    return ChargeResult(
        payment_id="",
        status=PaymentStatus.FAILED,
        gateway="",
        failure_type=FailureType.MERCHANT,
        decline_code=f"refused_{code.lower()}",
        retryable=False,
        reason=f"refused by the payment service ({code}): {detail}"[:REASON_LENGTH],
    )


def attempt_key(invoice_id: str, attempt: int) -> str:
    """The charge's idempotency key: one per invoice and attempt, so a replay never charges twice."""
    return f"{invoice_id}:{attempt}"


def described(result: ChargeResult | NoAnswer) -> dict[str, str]:
    """How a charge's answer reads in logs and traces: its outcome ("no_answer" without one), the
    gateway that routing chose, and the decline code (the call's status code without an answer)."""
    if isinstance(result, NoAnswer):
        return {"outcome": "no_answer", "gateway": "", "decline_code": result.code}
    return {
        "outcome": outcome_of(result).value,
        "gateway": result.gateway,
        "decline_code": result.decline_code,
    }


def tally(outcomes: Iterable[Outcome], results: Iterable[ChargeResult | NoAnswer]) -> Counter[str]:
    """How many of a batch's charges ended each way: the outcomes recorded, and the charges without
    an answer as back-pressure (told when to come again) or as no answer."""
    counts = Counter(outcome.value for outcome in outcomes)
    for result in results:
        if isinstance(result, NoAnswer):
            counts["back_pressure" if result.retry_after is not None else "no_answer"] += 1
    return counts
