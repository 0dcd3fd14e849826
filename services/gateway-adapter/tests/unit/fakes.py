"""In-memory stand-ins for the charge path's ports, so `Payments` runs without servers and the
tests can count what it asks of its store and of the gateway."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import cast

from billing_common.clock import ControllableClock
from billing_common.pacing import Booking
from gateway_adapter.app.breakers import CircuitBreakers
from gateway_adapter.app.payments import Payments, Policy
from gateway_adapter.app.ports import (
    Claim,
    Gateway,
    GatewayCharge,
    GatewayRefund,
    GatewayReply,
    PaymentStore,
    Recording,
)
from gateway_adapter.domain.payments import Payment, Status
from gateway_adapter.domain.routing import Router, Routes

GATEWAY = "sandbox-card"
NOW = datetime(2031, 1, 1, tzinfo=UTC)


class FakePayments:
    """The payments table as a dict by key, with every claim and record call kept as a list of
    the keys it carried."""

    def __init__(self) -> None:
        self.by_key: dict[str, Payment] = {}
        self.claims: list[list[str]] = []
        self.recordings: list[list[str]] = []

    async def claim(
        self, claims: Sequence[Claim], now: datetime, lease_until: datetime
    ) -> list[tuple[Payment | None, bool]]:
        self.claims.append([claim.request.idempotency_key for claim in claims])
        answers: list[tuple[Payment | None, bool]] = []
        for claim in claims:
            key = claim.request.idempotency_key
            stored = self.by_key.get(key)
            if stored is not None:
                answers.append((stored, False))
                continue
            payment = Payment(
                payment_id=claim.payment_id,
                request=claim.request,
                fingerprint=claim.request.fingerprint(),
                gateway=claim.gateway,
                status=Status.PROCESSING,
                classification=None,
                gateway_code="",
                gateway_message="",
                gateway_reference="",
                refunded=claim.request.amount - claim.request.amount,
                created_at=now,
                updated_at=now,
            )
            self.by_key[key] = payment
            answers.append((payment, True))
        return answers

    async def record(self, recordings: Sequence[Recording], now: datetime) -> list[Payment | None]:
        self.recordings.append([r.payment.request.idempotency_key for r in recordings])
        answers: list[Payment | None] = []
        for recording in recordings:
            key = recording.payment.request.idempotency_key
            if self.by_key[key].status is not recording.payment.status:
                answers.append(None)
                continue
            reply = recording.outcome.reply or GatewayReply(code="")
            self.by_key[key] = replace(
                self.by_key[key],
                status=recording.outcome.status,
                classification=recording.outcome.classification,
                gateway_code=reply.code,
                gateway_reference=reply.reference,
                updated_at=now,
            )
            answers.append(self.by_key[key])
        return answers

    async def get(self, payment_id: str) -> Payment | None:
        return next((p for p in self.by_key.values() if p.payment_id == payment_id), None)

    async def renew_leases(self, payment_ids: Sequence[str], lease_until: datetime) -> None:
        return None


class ApprovingGateway:
    """A gateway that approves every charge and keeps each call's key."""

    name = GATEWAY

    def __init__(self) -> None:
        self.charged: list[str] = []

    async def charge(self, call: GatewayCharge) -> GatewayReply:
        self.charged.append(call.idempotency_key)
        return GatewayReply(code="approved", reference=f"ch_{len(self.charged)}")

    async def refund(self, call: GatewayRefund) -> GatewayReply:
        raise AssertionError("the charge path never refunds")

    async def find(self, merchant_id: str, idempotency_key: str, credentials_ref: str) -> GatewayReply | None:
        return None


class UnlimitedPacer:
    """No rate limit on any gateway: every charge goes at once."""

    def limited(self, gateway: str) -> bool:
        return False

    def now(self) -> float:
        return 0.0

    async def book(self, gateway: str, count: int, horizon_s: float | None = None) -> Booking:
        return Booking(count, 0.0, 0.0, 0.0)

    def on_time(self, gateway: str, due: float) -> bool:
        return True

    def waited(self, gateway: str, seconds: float) -> None:
        return None

    async def wait_turn(self, gateway: str) -> None:
        return None


class QuietMetrics:
    def charge_answered(self, gateway: str, status: str, failure_type: str) -> None:
        return None

    def gateway_answered(self, gateway: str, operation: str, seconds: float) -> None:
        return None

    def unmapped_code(self, gateway: str) -> None:
        return None

    def unknown_checked(self, result: str) -> None:
        return None

    def breaker_state(self, merchant: str, gateway: str, state: int) -> None:
        return None

    def webhook(self, source: str, result: str) -> None:
        return None


def payments_on(store: FakePayments, gateway: ApprovingGateway) -> Payments:
    """The charge path of one pod over the fakes: every card charge goes to `gateway`."""
    clock = ControllableClock(NOW)
    metrics = QuietMetrics()
    return Payments(
        cast(PaymentStore, store),
        {GATEWAY: cast(Gateway, gateway)},
        Router(Routes.from_setting(""), [GATEWAY]),
        CircuitBreakers(5, timedelta(seconds=30), clock, metrics),
        UnlimitedPacer(),
        clock,
        Policy(
            in_flight_wait=timedelta(seconds=1),
            processing_timeout=timedelta(seconds=30),
            unknown_check_schedule=[timedelta(minutes=1)],
            idempotency_retention=timedelta(days=1),
        ),
        metrics,
    )
