"""What the chaos test bills and meters: customers whose cards behave in known ways, one weekly plan,
and a steady stream of usage events and quota checks that keeps going while things fail."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections import Counter
from collections.abc import Coroutine
from dataclasses import dataclass
from datetime import date
from typing import Any

import grpc

from billing.common.v1 import common_pb2 as common
from billing.quota.v1 import quota_pb2 as qpb
from billing.recurring.v1 import recurring_pb2 as rpb

PLAN = "chaos-weekly"
PRICE_MINOR = 2500
USAGE_KEY = "api.calls"
HEALTHY, SOFT, HARD = "healthy", "soft decline", "hard decline"
# Of every 20 customers: 14 healthy cards, 3 soft declines, 3 hard declines.
CARD_CYCLE = (
    [(HEALTHY, "tok_success")] * 14
    + [(SOFT, "tok_insufficient_funds"), (SOFT, "tok_do_not_honor"), (SOFT, "tok_insufficient_funds")]
    + [(HARD, "tok_stolen_card"), (HARD, "tok_expired_card"), (HARD, "tok_lost_card")]
)
# Answers that say nothing about whether the event was counted: the same key is sent again.
NO_ANSWER = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.CANCELLED,
    }
)


@dataclass
class Customer:
    account: str
    merchant: str
    card: str
    token: str
    billing_date: date
    subscription_id: str = ""


def customers(scenario: int, merchant: str, count: int, billing_date: date) -> list[Customer]:
    return [
        Customer(f"acct-s{scenario}-{i:04d}", merchant, *CARD_CYCLE[i % len(CARD_CYCLE)], billing_date)
        for i in range(count)
    ]


def plan_request() -> qpb.CreatePlanRequest:
    return qpb.CreatePlanRequest(
        code=PLAN,
        spec=qpb.PlanSpec(
            name="Chaos weekly",
            price=common.Money(amount_minor=PRICE_MINOR, currency="USD"),
            frequency=common.BILLING_FREQUENCY_WEEKLY,
            entitlements=[
                qpb.Entitlement(
                    key=USAGE_KEY,
                    limit=1_000_000_000,
                    period=qpb.PERIOD_NONE,
                    behaviour=qpb.OVER_QUOTA_BEHAVIOUR_ALLOW,
                    included_quantity=1_000_000_000,
                )
            ],
        ),
        idempotency_key=f"plan-{PLAN}",
    )


async def subscribe(recurring: Any, customer: Customer) -> None:
    day = customer.billing_date
    reply = await recurring.CreateSubscription(
        rpb.CreateSubscriptionRequest(
            account_id=customer.account,
            merchant_id=customer.merchant,
            plan_code=PLAN,
            start_date=common.Date(year=day.year, month=day.month, day=day.day),
            payment_method=common.PaymentMethod(
                type=common.PAYMENT_METHOD_TYPE_CARD, gateway_token=customer.token
            ),
            idempotency_key=f"create-{customer.account}",
        ),
        timeout=30,
    )
    customer.subscription_id = reply.subscription.subscription_id


class UsageLoad:
    """Usage events at a steady rate, each sent again under its own key until it gets an answer.

    `accepted` holds what quota said it counted (or had counted under that key before), which is
    what its counters and its usage ledger must both add up to once everything has settled.
    """

    def __init__(self, quota: Any, tenants: list[str], rate: float, in_flight: int = 32) -> None:
        self._quota = quota
        self._tenants = tenants
        self._rate = rate
        self._in_flight = in_flight
        self._random = random.Random(14)
        self._sending: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.waiting: dict[str, qpb.UsageEvent] = {}
        self.accepted: dict[str, qpb.UsageEvent] = {}
        self.refused: dict[str, str] = {}
        # Every answer each key got, in order ("INTERNAL", "OK counted", "OK replay", ...).
        self.history: dict[str, list[str]] = {}
        self.phase = "start"
        # (phase, rpc, status code) -> calls
        self.answers: Counter[tuple[str, str, str]] = Counter()

    async def run(self) -> None:
        """Until cancelled: one new event and one check per tick, and every second the waiting ones again."""
        loop = asyncio.get_running_loop()
        tick = 1.0 / self._rate
        next_at = loop.time()
        next_retry = next_at + 1.0
        number = 0
        while True:
            number += 1
            tenant = self._random.choice(self._tenants)
            key = f"usage-{number:06d}"
            self.waiting[key] = qpb.UsageEvent(
                tenant_id=tenant, key=USAGE_KEY, delta=1 + number % 5, idempotency_key=key
            )
            self._send(key)
            if len(self._tasks) < 2 * self._in_flight:  # no more checks piled on a slow quota
                self._spawn(self._check(self._random.choice(self._tenants)))
            if loop.time() >= next_retry:
                self.send_waiting()
                next_retry = loop.time() + 1.0
            next_at += tick
            await asyncio.sleep(max(0.0, next_at - loop.time()))

    def send_waiting(self) -> None:
        for key in list(self.waiting):
            self._send(key)

    async def drain(self, timeout: float) -> None:
        """Send what still waits for an answer until none does (or the time is up)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while (self.waiting or self._tasks) and loop.time() < deadline:
            self.send_waiting()
            await asyncio.sleep(0.5)

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _send(self, key: str) -> None:
        if key in self._sending or len(self._sending) >= self._in_flight:
            return
        self._sending.add(key)
        self._spawn(self._record(key))

    async def _record(self, key: str) -> None:
        event = self.waiting[key]
        phase = self.phase
        history = self.history.setdefault(key, [])
        try:
            reply = await self._quota.RecordUsage(qpb.RecordUsageRequest(event=event), timeout=5)
        except grpc.aio.AioRpcError as error:
            self.answers[phase, "RecordUsage", error.code().name] += 1
            history.append(error.code().name)
            if error.code() not in NO_ANSWER:
                self.refused[key] = f"{error.code().name}: {error.details()}"
                del self.waiting[key]
        else:
            self.answers[phase, "RecordUsage", "OK"] += 1
            history.append("OK counted" if reply.counted else "OK replay")
            self.accepted[key] = self.waiting.pop(key)
        finally:
            self._sending.discard(key)

    async def _check(self, tenant: str) -> None:
        phase = self.phase
        try:
            await self._quota.CheckQuota(
                qpb.CheckQuotaRequest(tenant_id=tenant, key=USAGE_KEY, amount=1), timeout=5
            )
        except grpc.aio.AioRpcError as error:
            self.answers[phase, "CheckQuota", error.code().name] += 1
        else:
            self.answers[phase, "CheckQuota", "OK"] += 1

    def accepted_by_tenant(self) -> Counter[str]:
        totals: Counter[str] = Counter()
        for event in self.accepted.values():
            totals[event.tenant_id] += event.delta
        return totals
