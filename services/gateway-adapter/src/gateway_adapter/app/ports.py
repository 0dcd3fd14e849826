"""What the use cases need from the outside: gateways and a durable payment store."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from billing_common.money import Money
from billing_common.pacing import Booking
from gateway_adapter.domain.classification import Classification
from gateway_adapter.domain.payments import ChargeRequest, Payment, PaymentEvent, RefundRequest, Status


class GatewayUnreachable(Exception):
    """The gateway never received the request (connection refused, HTTP 597): nothing happened."""


class GatewayTimeout(Exception):
    """The request left but no answer came back: the gateway may have acted on it."""


@dataclass(frozen=True)
class GatewayCharge:
    payment_id: str
    merchant_id: str
    token: str
    amount: Money
    idempotency_key: str
    credentials_ref: str
    metadata: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class GatewayRefund:
    payment_id: str
    gateway_reference: str
    amount: Money
    idempotency_key: str
    credentials_ref: str


@dataclass(frozen=True)
class GatewayReply:
    """A gateway's answer in its own words; classification turns `code` into ours."""

    code: str
    message: str = ""
    reference: str = ""
    pending: bool = False


class Gateway(Protocol):
    """One payment gateway. Adding a gateway means adding one class with these three calls."""

    name: str

    async def charge(self, call: GatewayCharge) -> GatewayReply: ...

    async def refund(self, call: GatewayRefund) -> GatewayReply: ...

    async def find(self, merchant_id: str, idempotency_key: str, credentials_ref: str) -> GatewayReply | None:
        """The outcome of an earlier charge with this key, or None if the gateway never saw it."""
        ...


class Pacer(Protocol):
    """Each gateway's rate limit, shared by every pod."""

    def limited(self, gateway: str) -> bool: ...

    async def book(self, gateway: str, count: int, horizon_s: float | None = None) -> Booking:
        """Up to `count` turns starting within `horizon_s`, on `now()`'s clock; with none booked,
        `due(0)` is the next free one."""
        ...

    def now(self) -> float:
        """The clock turns are due on (monotonic seconds)."""
        ...

    def on_time(self, gateway: str, due: float) -> bool:
        """Whether a turn due at `due` (on `now()`'s clock) may still go, or must be booked again."""
        ...

    def waited(self, gateway: str, seconds: float) -> None: ...

    async def wait_turn(self, gateway: str) -> None:
        """Wait for the next free turn, however far ahead."""
        ...


@dataclass(frozen=True)
class PaymentUpdate:
    """A payment's new state and what to announce about it, written in one transaction."""

    status: Status
    classification: Classification | None
    reply: GatewayReply | None
    event: PaymentEvent | None
    next_check_at: datetime | None = None
    previous_status: Status | None = None
    return_code: str = ""


@dataclass(frozen=True)
class StoredRefund:
    refund_id: str
    payment_id: str
    amount: Money
    fingerprint: str
    created_at: datetime


@dataclass(frozen=True)
class RefundClaim:
    """A refund's row, written before the gateway is asked; `recorded` once the gateway answered."""

    refund: StoredRefund
    payment: Payment
    recorded: bool


@dataclass(frozen=True)
class Claim:
    """A caller's bid for an idempotency key: the payment it would create, and its trace."""

    request: ChargeRequest
    payment_id: str
    gateway: str
    trace_context: Mapping[str, str]


@dataclass(frozen=True)
class Recording:
    """An outcome to apply if the payment is still as `payment` says."""

    payment: Payment
    outcome: PaymentUpdate


class PaymentStore(Protocol):
    async def claim(
        self, claims: Sequence[Claim], now: datetime, lease_until: datetime
    ) -> list[tuple[Payment | None, bool]]:
        """Hold each key for one caller, the free ones in one statement, leased until `lease_until`.

        Per claim: (the payment, True) if this caller may talk to the gateway, (the stored payment,
        False) if the key is taken, (None, False) if it was released meanwhile by retention.
        """
        ...

    async def record(self, recordings: Sequence[Recording], now: datetime) -> list[Payment | None]:
        """Apply the outcomes in one transaction; None for a payment someone else moved."""
        ...

    async def renew_leases(self, payment_ids: Sequence[str], lease_until: datetime) -> None:
        """Keep the janitor away from charges whose gateway calls are still running here."""
        ...

    async def get(self, payment_id: str) -> Payment | None: ...

    async def get_by_key(self, idempotency_key: str) -> Payment | None: ...

    async def claim_due_checks(
        self, now: datetime, lease_until: datetime, limit: int
    ) -> Sequence[Payment]: ...

    async def trace_context(self, payment_id: str) -> dict[str, str]:
        """The trace of the Charge call that created the payment ({} when it was not traced)."""
        ...

    async def forget_keys(self, older_than: datetime) -> int: ...

    async def claim_refund(
        self,
        request: RefundRequest,
        refund_id: str,
        now: datetime,
        amount_of: Callable[[Payment, int], Money],
    ) -> RefundClaim:
        """The refund with this key, or a new claim of `amount_of(payment, already claimed)` written
        under the payment's row lock, so two refunds never exceed what is left. The lock ends with
        the claim: the gateway is called after it."""
        ...

    async def record_refund(
        self, refund_id: str, reply: GatewayReply, now: datetime
    ) -> tuple[StoredRefund, Payment]:
        """Record the gateway's answer to a claim once (a second recording returns the first)."""
        ...

    async def apply_notice(
        self,
        source: str,
        event_id: str,
        gateway_reference: str,
        idempotency_key: str,
        decide: Callable[[Payment], PaymentUpdate | None],
        now: datetime,
    ) -> bool:
        """Record a webhook event id and apply its outcome once; False if the id was seen before."""
        ...


class PaymentMetrics(Protocol):
    """What the payment path reports; an adapter keeps the figures."""

    def charge_answered(self, gateway: str, status: str, failure_type: str) -> None: ...
    def gateway_answered(self, gateway: str, operation: str, seconds: float) -> None: ...
    def unmapped_code(self, gateway: str) -> None: ...
    def unknown_checked(self, result: str) -> None: ...
    def breaker_state(self, merchant: str, gateway: str, state: int) -> None:
        """0 closed, 1 half-open, 2 open."""
        ...

    def webhook(self, source: str, result: str) -> None: ...
