"""Charging, refunding and resolving payments: the rules that keep anyone from being charged twice."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import Counter, deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta

from billing_common import telemetry
from billing_common.clock import Clock
from billing_common.errors import BillingError, InvalidArgument, NotFound, Unavailable
from billing_common.grouping import GroupCommit
from gateway_adapter.app.breakers import CircuitBreakers, CircuitOpen, CircuitView, Outage
from gateway_adapter.app.ports import (
    Claim,
    Gateway,
    GatewayCharge,
    GatewayRefund,
    GatewayReply,
    GatewayTimeout,
    GatewayUnreachable,
    Pacer,
    PaymentMetrics,
    PaymentStore,
    PaymentUpdate,
    Recording,
    RefundClaim,
    StoredRefund,
)
from gateway_adapter.domain.classification import (
    CIRCUIT_OPEN,
    NO_TURN,
    NOT_RECEIVED,
    OUTCOME_UNKNOWN,
    UNREACHABLE,
    Classification,
    classify,
)
from gateway_adapter.domain.payments import (
    ChargeRequest,
    Lane,
    Payment,
    RefundRequest,
    Status,
    charge_event,
    news_event,
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

REPLAY_POLL = 0.02
STILL_IN_PROGRESS = "a charge with this key is still in progress; retry with the same key"
KEY_BEING_RELEASED = "idempotency key is being released; retry"


@dataclass(frozen=True)
class Turn:
    """When a charge may go, and when it was due, to tell a turn woken too late (pacer's clock)."""

    go_at: float
    due: float


class _Turns:
    """Turns under one gateway's rate limit for the charges of one call, booked as they come
    within the lane's horizon, each charge waiting no longer than the lane allows.

    With a `queue` (the batch lane), calls book one after another: a call holds its place from its
    first booking until all its charges are sent (or given up), so that a turn it misses (woken too
    late) is booked again before the next call's. Interleaved, concurrent batches would all finish
    together and leave the gateway idle while their callers settle them and bring the next ones; one
    after another, each caller gets its answers while the next batch is being charged."""

    def __init__(
        self,
        pacer: Pacer,
        gateway: str,
        wanted: int,
        horizon_s: float,
        within_s: float,
        queue: asyncio.Lock | None = None,
    ) -> None:
        self._pacer = pacer
        self._gateway = gateway
        self._wanted = wanted
        self._unsent = wanted
        self._horizon_s = horizon_s
        self._within_s = within_s
        self._deadline = pacer.now() + within_s
        self._ready: deque[Turn] = deque()
        self._lock = asyncio.Lock()
        self._queue = queue
        self._queued = False
        self.retry_after = timedelta(0)

    async def _enter_queue(self) -> bool:
        """Wait for the calls ahead to have sent their charges; False when that takes past the deadline."""
        if self._queue is None or self._queued:
            return True
        try:
            await asyncio.wait_for(self._queue.acquire(), max(0.0, self._deadline - self._pacer.now()))
        except TimeoutError:
            self.retry_after = timedelta(seconds=self._within_s)
            return False
        self._queued = True
        return True

    def leave_queue(self) -> None:
        """Let the next call book (all charges sent, or this call is over)."""
        if self._queue is not None and self._queued:
            self._queued = False
            self._queue.release()

    def _done_with(self) -> None:
        """One charge sent or given up; the last one gives the place in the queue to the next call."""
        self._unsent -= 1
        if self._unsent <= 0:
            self.leave_queue()

    def sent(self) -> None:
        """A charge went at its turn."""
        self._done_with()

    async def take(self, *, again: bool = False) -> Turn | None:
        """This charge's turn, or None when none comes in time (see `retry_after`).
        `again`: the turn taken before was missed (woken too late), book another."""
        pacer = self._pacer
        if not pacer.limited(self._gateway):
            return Turn(pacer.now(), pacer.now())
        async with self._lock:
            self._wanted += again
            while not self._ready:
                # A turn missed (woken too late) is booked again at once, not behind other calls.
                if not again and not await self._enter_queue():
                    self._give_up()
                    return None
                booking = await pacer.book(self._gateway, self._wanted, self._horizon_s)
                self._ready.extend(Turn(booking.go_at(n), booking.due(n)) for n in range(booking.booked))
                self._wanted -= booking.booked
                if booking.booked:
                    break
                # Nothing free within the horizon: wait until the next free turn comes within it.
                within_reach = booking.due(0) - self._horizon_s
                if within_reach > self._deadline:
                    self.retry_after = timedelta(seconds=max(within_reach - pacer.now(), booking.interval_s))
                    self._give_up()
                    return None
                await asyncio.sleep(max(within_reach - pacer.now(), booking.interval_s))
            return self._ready.popleft()

    def _give_up(self) -> None:
        self._wanted -= 1
        self._done_with()


class BackPressure(Unavailable):
    """The gateway's rate limit has no turn for this charge soon enough: nothing was done."""

    def __init__(self, retry_after: timedelta) -> None:
        seconds = retry_after.total_seconds()
        super().__init__(f"the gateway's rate limit is taken; retry with the same key in {seconds:.3f}s")
        self.retry_after = retry_after


@dataclass(frozen=True)
class ChargeAnswer:
    """One charge's answer: its payment (new or replayed), or the error Charge would raise for it."""

    payment: Payment | None
    replayed: bool = False
    error: BillingError | None = None


@dataclass(frozen=True)
class Policy:
    in_flight_wait: timedelta
    # The lease on a charge being made; renewed every third of it while the gateway call lives.
    processing_timeout: timedelta
    unknown_check_schedule: Sequence[timedelta]
    idempotency_retention: timedelta
    janitor_batch: int = 100
    interactive_max_wait: timedelta = timedelta(seconds=2)
    batch_pacing_horizon: timedelta = timedelta(milliseconds=200)
    batch_max_wait: timedelta = timedelta(seconds=5)


@dataclass(frozen=True)
class _Fresh:
    """A charge this call claimed: it talks to the gateway, at its turn."""

    index: int
    payment: Payment
    credentials_ref: str


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
        metrics: PaymentMetrics,
    ) -> None:
        self._metrics = metrics
        self._store = store
        self._gateways = gateways
        self._router = router
        self._breakers = breakers
        self._pacer = pacer
        self._clock = clock
        self._policy = policy
        # Concurrent charges claim their keys and record their outcomes together.
        self._claims: GroupCommit[Claim, tuple[Payment | None, bool]] = GroupCommit(self._claim_group)
        self._recordings: GroupCommit[Recording, Payment | None] = GroupCommit(self._record_group)
        # Charges whose gateway calls are running in this process: their leases are renewed.
        self._live: set[str] = set()
        self._batch_queues: dict[str, asyncio.Lock] = {}

    async def charge(self, request: ChargeRequest, lane: Lane = Lane.INTERACTIVE) -> tuple[Payment, bool]:
        """The payment for this key, and whether it is the stored result of an earlier call."""
        (answer,) = await self.charge_batch([request], lane)
        if answer.error is not None:
            raise answer.error
        assert answer.payment is not None
        return answer.payment, answer.replayed

    async def charge_batch(self, requests: Sequence[ChargeRequest], lane: Lane) -> list[ChargeAnswer]:
        """Each charge as Charge would make it, the keys claimed together and the outcomes recorded
        together; one answer per request, in order."""
        answers: list[ChargeAnswer | None] = [None] * len(requests)
        wanted: list[int] = []
        keys: set[str] = set()
        for index, request in enumerate(requests):
            try:
                validate_charge(request)
            except InvalidArgument as error:
                answers[index] = ChargeAnswer(None, error=error)
                continue
            if request.idempotency_key in keys:
                answers[index] = ChargeAnswer(
                    None, error=InvalidArgument.of("idempotency_key", "appears twice in the batch")
                )
                continue
            keys.add(request.idempotency_key)
            wanted.append(index)
        # Two rounds: a key whose earlier call turns out never to have reached the gateway runs again.
        for _ in range(2):
            if not wanted:
                break
            waiting = await self._charge_claimed(requests, wanted, lane, answers)
            wanted = await self._wait_for_earlier_calls(requests, waiting, answers)
        for index in wanted:
            answers[index] = ChargeAnswer(None, error=Unavailable(STILL_IN_PROGRESS))
        assert all(answer is not None for answer in answers)
        return [answer for answer in answers if answer is not None]

    async def _charge_claimed(
        self,
        requests: Sequence[ChargeRequest],
        indexes: Sequence[int],
        lane: Lane,
        answers: list[ChargeAnswer | None],
    ) -> dict[int, Payment]:
        """Claim the keys together, make the claimed charges, record them together; returns the
        keys held by earlier calls, by index."""
        routes = {
            index: self._router.route(requests[index].merchant_id, requests[index].method_type)
            for index in indexes
        }
        claims = [
            Claim(requests[index], str(uuid.uuid4()), routes[index].gateway, telemetry.capture())
            for index in indexes
        ]
        # A charge on its own joins the others in flight; a batch is a group already, and writing it
        # apart keeps single charges from waiting behind it.
        claimed = await (self._claims.submit(claims) if len(claims) == 1 else self._claim_group(claims))
        fresh: list[_Fresh] = []
        earlier: dict[int, Payment] = {}
        for index, (payment, mine) in zip(indexes, claimed, strict=True):
            if payment is None:  # released between the statements by the retention janitor
                answers[index] = ChargeAnswer(None, error=Unavailable(KEY_BEING_RELEASED))
            elif mine:
                fresh.append(_Fresh(index, payment, routes[index].credentials_ref))
            else:
                earlier[index] = payment
        if not fresh:
            return earlier
        turns = {
            gateway: _Turns(
                self._pacer, gateway, count, *self._lane_wait(lane), self._lane_queue(lane, gateway)
            )
            for gateway, count in Counter(item.payment.gateway for item in fresh).items()
        }
        self._live.update(item.payment.payment_id for item in fresh)
        try:
            try:
                outcomes = await asyncio.gather(
                    *(self._charge_at_turn(item, turns[item.payment.gateway]) for item in fresh)
                )
            finally:
                for gateway_turns in turns.values():
                    gateway_turns.leave_queue()
            recordings = [
                Recording(item.payment, outcome) for item, (outcome, _) in zip(fresh, outcomes, strict=True)
            ]
            recorded = await (
                self._recordings.submit(recordings)
                if len(recordings) == 1
                else self._record_group(recordings)
            )
        finally:
            self._live.difference_update(item.payment.payment_id for item in fresh)
        for item, (_, retry_after), payment in zip(fresh, outcomes, recorded, strict=True):
            if payment is None:  # the janitor resolved it: its lease lapsed (a stalled pod)
                payment = await self._require(item.payment.payment_id)
            if retry_after is not None:
                answers[item.index] = ChargeAnswer(None, error=BackPressure(retry_after))
                continue
            self._metrics.charge_answered(payment.gateway, payment.status, payment.failure_type)
            answers[item.index] = ChargeAnswer(payment)
        return earlier

    async def _charge_at_turn(self, item: _Fresh, turns: _Turns) -> tuple[PaymentUpdate, timedelta | None]:
        """The charge's outcome, made at its turn; with no turn in time, nothing sent and when to retry."""
        started = self._pacer.now()
        late = False
        while True:
            turn = await turns.take(again=late)
            if turn is None:
                return PaymentUpdate(Status.FAILED, NO_TURN, None, None), turns.retry_after
            delay = turn.go_at - self._pacer.now()
            if delay > 0:
                await asyncio.sleep(delay)
            if self._pacer.on_time(item.payment.gateway, turn.due):
                break
            late = True
        turns.sent()
        self._pacer.waited(item.payment.gateway, self._pacer.now() - started)
        return await self._call_gateway(item.payment, item.credentials_ref), None

    def _lane_queue(self, lane: Lane, gateway: str) -> asyncio.Lock | None:
        """Batch calls of this pod book a gateway's turns one call after another (see `_Turns`)."""
        if lane is Lane.INTERACTIVE:
            return None
        return self._batch_queues.setdefault(gateway, asyncio.Lock())

    def _lane_wait(self, lane: Lane) -> tuple[float, float]:
        """How far ahead the lane books turns, and how long a charge of it waits for one."""
        if lane is Lane.INTERACTIVE:
            wait = self._policy.interactive_max_wait.total_seconds()
            return wait, wait
        return self._policy.batch_pacing_horizon.total_seconds(), self._policy.batch_max_wait.total_seconds()

    async def _wait_for_earlier_calls(
        self,
        requests: Sequence[ChargeRequest],
        earlier: Mapping[int, Payment],
        answers: list[ChargeAnswer | None],
    ) -> list[int]:
        """Answer the keys held by earlier calls with their stored results; the indexes whose earlier
        call never reached the gateway (the key may run again)."""
        again: list[int] = []

        async def settle(index: int, payment: Payment) -> None:
            try:
                payment.replay_of(requests[index])
                payment = await self._finished(payment)
            except BillingError as error:
                answers[index] = ChargeAnswer(None, error=error)
                return
            if payment.status is Status.FAILED:
                again.append(index)
            else:
                answers[index] = ChargeAnswer(payment, replayed=True)

        await asyncio.gather(*(settle(index, payment) for index, payment in earlier.items()))
        return sorted(again)

    async def _claim_group(self, claims: list[Claim]) -> Sequence[tuple[Payment | None, bool]]:
        now = self._clock.now()
        return await self._store.claim(claims, now, now + self._policy.processing_timeout)

    async def _record_group(self, recordings: list[Recording]) -> Sequence[Payment | None]:
        return await self._store.record(recordings, self._clock.now())

    async def keep_leases(self) -> None:
        """Renew the leases of the charges running here, so the janitor never asks the gateway about
        a call that may still reach it (and never frees its key for a second charge)."""
        every = self._policy.processing_timeout.total_seconds() / 3
        while True:
            await asyncio.sleep(every)
            if self._live:
                await self._store.renew_leases(
                    sorted(self._live), self._clock.now() + self._policy.processing_timeout
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
            found = await self._store.get(payment.payment_id)
            if found is None:  # released by retention meanwhile
                raise Unavailable(KEY_BEING_RELEASED)
            payment = found
        if payment.status is Status.PROCESSING:
            raise Unavailable(STILL_IN_PROGRESS)
        return payment

    async def _call_gateway(self, payment: Payment, credentials_ref: str) -> PaymentUpdate:
        gateway = self._gateways[payment.gateway]
        request = payment.request
        call = GatewayCharge(
            payment.payment_id,
            request.merchant_id,
            request.token,
            request.amount,
            request.idempotency_key,
            credentials_ref,
            request.metadata,
        )
        reply: GatewayReply | None = None
        # Paced before this (outside the breaker): waiting is not gateway time, and a half-open
        # circuit's one probe is not held while it waits.
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
        return PaymentUpdate(
            status,
            classification,
            reply,
            charge_event(status),
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
            self._metrics.gateway_answered(gateway.name, "charge", time.perf_counter() - started)
        return reply, self._classify(gateway.name, reply.code)

    def _classify(self, gateway: str, code: str) -> Classification:
        classification, known = classify(gateway, code)
        if not known:
            self._metrics.unmapped_code(gateway)
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

    async def refund(self, request: RefundRequest) -> tuple[StoredRefund, Payment, bool]:
        validate_refund(request)
        claim = await self._store.claim_refund(
            request,
            str(uuid.uuid4()),
            self._clock.now(),
            lambda payment, claimed_minor: refund_amount(payment, request, claimed_minor),
        )
        if claim.recorded:
            return claim.refund, claim.payment, True
        reply = await self._ask_refund(claim, request.idempotency_key)
        stored, refunded = await self._store.record_refund(claim.refund.refund_id, reply, self._clock.now())
        return stored, refunded, False

    async def _ask_refund(self, claim: RefundClaim, idempotency_key: str) -> GatewayReply:
        """The gateway's refund, with no lock held: a claim left unrecorded (the gateway did not
        answer) is asked again with the same key by the caller's retry, so it is made once."""
        payment = claim.payment
        gateway = self._gateways[payment.gateway]
        route = self._router.route(payment.request.merchant_id, payment.request.method_type)
        call = GatewayRefund(
            payment.payment_id,
            payment.gateway_reference,
            claim.refund.amount,
            idempotency_key,
            route.credentials_ref,
        )
        await self._pacer.wait_turn(gateway.name)
        started = time.perf_counter()
        try:
            return await gateway.refund(call)
        except (GatewayUnreachable, GatewayTimeout) as error:
            raise Unavailable(
                f"{gateway.name} did not confirm the refund; retry with the same key"
            ) from error
        finally:
            self._metrics.gateway_answered(gateway.name, "refund", time.perf_counter() - started)

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
            self._metrics.unknown_checked("gateway_unavailable")
            later = next_check_at(self._policy.unknown_check_schedule, payment.checks_done, self._clock.now())
            await self._store.record(
                [
                    Recording(
                        payment,
                        PaymentUpdate(Status.UNKNOWN, OUTCOME_UNKNOWN, None, None, next_check_at=later),
                    )
                ],
                self._clock.now(),
            )
            return
        if reply is None:
            classification, status = NOT_RECEIVED, Status.FAILED
        else:
            classification = self._classify(gateway.name, reply.code)
            status = status_for(classification, pending=reply.pending)
        self._metrics.unknown_checked(status.lower())
        outcome = PaymentUpdate(
            status, classification, reply, news_event(payment.status, status), previous_status=payment.status
        )
        await self._store.record([Recording(payment, outcome)], self._clock.now())

    async def forget_old_keys(self) -> int:
        return await self._store.forget_keys(self._clock.now() - self._policy.idempotency_retention)
