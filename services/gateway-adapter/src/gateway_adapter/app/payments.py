"""Charging, refunding and resolving payments: the rules that keep anyone from being charged twice."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta

from billing_common import telemetry
from billing_common.clock import Clock
from billing_common.errors import NotFound, Unavailable
from gateway_adapter.app.breakers import CircuitBreakers, CircuitOpen, CircuitView, Outage
from gateway_adapter.app.metrics import CHARGES, GATEWAY_LATENCY, UNMAPPED_CODES, UNRESOLVED_CHECKS
from gateway_adapter.app.ports import (
    Gateway,
    GatewayCharge,
    GatewayRefund,
    GatewayReply,
    GatewayTimeout,
    GatewayUnreachable,
    Outcome,
    Pacer,
    PaymentEvent,
    PaymentStore,
    StoredRefund,
)
from gateway_adapter.domain.classification import (
    CIRCUIT_OPEN,
    NOT_RECEIVED,
    OUTCOME_UNKNOWN,
    UNREACHABLE,
    Classification,
    classify,
)
from gateway_adapter.domain.payments import (
    ChargeRequest,
    Payment,
    RefundRequest,
    Status,
    next_check_at,
    refund_amount,
    status_for,
    validate_charge,
    validate_refund,
)
from gateway_adapter.domain.routing import Router

log = logging.getLogger(__name__)
# A look-up this soon after the charge continues its trace; a later one starts its own, linked to it.
RECONCILE_IN_TRACE_WITHIN = timedelta(hours=1)

EVENT_FOR_STATUS = {
    Status.SUCCEEDED: PaymentEvent.SUCCEEDED,
    Status.PENDING: PaymentEvent.PENDING,
    Status.DECLINED: PaymentEvent.FAILED,
    Status.FAILED: PaymentEvent.FAILED,
}
REPLAY_POLL = 0.02


@dataclass(frozen=True)
class Policy:
    in_flight_wait: timedelta
    processing_timeout: timedelta
    unknown_check_schedule: Sequence[timedelta]
    idempotency_retention: timedelta
    janitor_batch: int = 100


class Payments:
    def __init__(
        self,
        store: PaymentStore,
        gateways: Mapping[str, Gateway],
        router: Router,
        breakers: CircuitBreakers,
        pacer: Pacer,
        clock: Clock,
        policy: Policy,
    ) -> None:
        self._store = store
        self._gateways = gateways
        self._router = router
        self._breakers = breakers
        self._pacer = pacer
        self._clock = clock
        self._policy = policy

    async def charge(self, request: ChargeRequest) -> tuple[Payment, bool]:
        """The payment for this key, and whether it is the stored result of an earlier call."""
        validate_charge(request)
        route = self._router.route(request.merchant_id, request.method_type)
        payment, claimed = await self._claim(request, route.gateway)
        if not claimed:
            payment.replay_of(request)
            payment = await self._finished(payment)
            if payment.status is not Status.FAILED:
                return payment, True
            # The call we waited for never reached the gateway (unreachable, or its pod died and the
            # janitor found nothing there): the key may run again, so this call runs it.
            payment, claimed = await self._claim(request, route.gateway)
            if not claimed:
                return await self._finished(payment), True
        outcome = await self._call_gateway(payment, route.credentials_ref)
        recorded = await self._store.record(payment, outcome, self._clock.now())
        if recorded is None:  # the janitor resolved it while we waited on a very slow gateway
            recorded = await self._require(payment.payment_id)
        CHARGES.labels(recorded.gateway, recorded.status, recorded.failure_type).inc()
        return recorded, False

    async def _claim(self, request: ChargeRequest, gateway: str) -> tuple[Payment, bool]:
        now = self._clock.now()
        return await self._store.claim(
            request, str(uuid.uuid4()), gateway, now, now + self._policy.processing_timeout
        )

    async def _finished(self, payment: Payment) -> Payment:
        """Wait a little for a concurrent first call with the same key, so both callers see its result.

        A call still in flight after that (or one whose pod died mid-charge, until the janitor has
        asked the gateway) is no answer at all: the caller is told to send the same key again,
        never given an outcome that is not known yet.
        """
        deadline = time.monotonic() + self._policy.in_flight_wait.total_seconds()
        while payment.status is Status.PROCESSING and time.monotonic() < deadline:
            await asyncio.sleep(REPLAY_POLL)
            payment = await self._require(payment.payment_id)
        if payment.status is Status.PROCESSING:
            raise Unavailable("a charge with this key is still in progress; retry with the same key")
        return payment

    async def _call_gateway(self, payment: Payment, credentials_ref: str) -> Outcome:
        gateway = self._gateways[payment.gateway]
        request = payment.request
        call = GatewayCharge(
            payment.payment_id,
            request.merchant_id,
            request.token,
            request.amount_minor,
            request.currency,
            request.idempotency_key,
            credentials_ref,
            request.metadata,
        )
        reply: GatewayReply | None = None
        # The gateway's own rate limit, outside the breaker: waiting is not gateway time, and a
        # half-open circuit's one probe is not held while it waits.
        await self._pacer.wait_turn(gateway.name)
        try:
            async with self._breakers.guard(request.merchant_id, gateway.name):
                reply, classification = await self._timed_charge(gateway, call)
                if classification.counts_as_outage:
                    raise Outage(classification.normalized_code)
        except CircuitOpen:
            classification = CIRCUIT_OPEN
        except Outage:
            pass
        status = status_for(classification, pending=reply is not None and reply.pending)
        now = self._clock.now()
        return Outcome(
            status,
            classification,
            reply,
            EVENT_FOR_STATUS.get(status),
            next_check_at=next_check_at(self._policy.unknown_check_schedule, 0, now)
            if status is Status.UNKNOWN
            else None,
        )

    async def _timed_charge(
        self, gateway: Gateway, call: GatewayCharge
    ) -> tuple[GatewayReply | None, Classification]:
        started = time.perf_counter()
        try:
            reply = await gateway.charge(call)
        except GatewayUnreachable:
            return None, UNREACHABLE
        except GatewayTimeout:
            return None, OUTCOME_UNKNOWN
        finally:
            GATEWAY_LATENCY.labels(gateway.name, "charge").observe(time.perf_counter() - started)
        return reply, self._classify(gateway.name, reply.code)

    @staticmethod
    def _classify(gateway: str, code: str) -> Classification:
        classification, known = classify(gateway, code)
        if not known:
            UNMAPPED_CODES.labels(gateway).inc()
            log.warning("unmapped gateway code", extra={"gateway": gateway, "gateway_code": code})
        return classification

    async def get(self, payment_id: str = "", idempotency_key: str = "") -> Payment:
        if payment_id:
            payment = await self._store.get(payment_id)
        else:
            payment = await self._store.get_by_key(idempotency_key)
        if payment is None:
            raise NotFound("payment not found")
        return payment

    async def _require(self, payment_id: str) -> Payment:
        return await self.get(payment_id=payment_id)

    def circuit(self, merchant_id: str, gateway: str) -> CircuitView:
        return self._breakers.view(merchant_id, gateway)

    async def refund(
        self, request: RefundRequest, currency: str | None
    ) -> tuple[StoredRefund, Payment, bool]:
        validate_refund(request)

        async def execute(payment: Payment) -> tuple[int, GatewayReply]:
            amount = refund_amount(payment, request, currency)
            gateway = self._gateways[payment.gateway]
            credentials = self._router.route(
                payment.request.merchant_id, payment.request.method_type
            ).credentials_ref
            call = GatewayRefund(
                payment.payment_id,
                payment.gateway_reference,
                amount,
                payment.request.currency,
                request.idempotency_key,
                credentials,
            )
            # Paced under the payment's row lock, as the call itself runs: refunds are few, and
            # pacing before the lock would let waiting for it make the call late for its slot.
            await self._pacer.wait_turn(gateway.name)
            started = time.perf_counter()
            try:
                return amount, await gateway.refund(call)
            except (GatewayUnreachable, GatewayTimeout) as error:
                raise Unavailable(
                    f"{gateway.name} did not confirm the refund; retry with the same key"
                ) from error
            finally:
                GATEWAY_LATENCY.labels(gateway.name, "refund").observe(time.perf_counter() - started)

        return await self._store.refund(request, str(uuid.uuid4()), self._clock.now(), execute)

    async def resolve_unknown(self) -> int:
        """Ask the gateways about due unresolved payments; returns how many were looked at."""
        now = self._clock.now()
        due = await self._store.claim_due_checks(
            now, now + self._policy.processing_timeout, self._policy.janitor_batch
        )
        for payment in due:
            # The look-up continues the charge's trace (or starts one linked to it, when late).
            with telemetry.span(
                "gateway.reconcile",
                parent=await self._store.trace_context(payment.payment_id),
                fresh_for=RECONCILE_IN_TRACE_WITHIN,
                keep=True,
                attributes={"payment.id": payment.payment_id, "payment.checks_done": payment.checks_done},
            ):
                await self._resolve(payment)
        return len(due)

    async def _resolve(self, payment: Payment) -> None:
        gateway = self._gateways[payment.gateway]
        request = payment.request
        credentials = self._router.route(request.merchant_id, request.method_type).credentials_ref
        await self._pacer.wait_turn(gateway.name)
        try:
            reply = await gateway.find(request.merchant_id, request.idempotency_key, credentials)
        except (GatewayUnreachable, GatewayTimeout):
            UNRESOLVED_CHECKS.labels("gateway_unavailable").inc()
            later = next_check_at(self._policy.unknown_check_schedule, payment.checks_done, self._clock.now())
            await self._store.record(
                payment,
                Outcome(Status.UNKNOWN, OUTCOME_UNKNOWN, None, None, next_check_at=later),
                self._clock.now(),
            )
            return
        if reply is None:
            classification, status = NOT_RECEIVED, Status.FAILED
        else:
            classification = self._classify(gateway.name, reply.code)
            status = status_for(classification, pending=reply.pending)
        UNRESOLVED_CHECKS.labels(status.lower()).inc()
        outcome = Outcome(
            status, classification, reply, PaymentEvent.RECONCILED, previous_status=payment.status
        )
        await self._store.record(payment, outcome, self._clock.now())

    async def forget_old_keys(self) -> int:
        return await self._store.forget_keys(self._clock.now() - self._policy.idempotency_retention)
