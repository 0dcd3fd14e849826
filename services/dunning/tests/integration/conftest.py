"""A dunning service on real PostgreSQL, Redis and RabbitMQ, a clock the test moves, and helpers
that act as recurring (publishing its invoice events) and as an operator."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from billing.common.v1 import common_pb2
from billing.dunning.v1 import dunning_pb2 as pb
from billing.dunning.v1 import dunning_pb2_grpc
from billing.events.v1 import invoice_pb2 as invoice_events
from billing.events.v1 import subscription_pb2 as sub_events
from billing_common.clock import ControllableClock
from billing_common.grpc_client import open_channel
from billing_common.service import ServiceHost
from billing_devtools.testing.plugin import EventCollector, InfraEnv, eventually, running_service
from billing_devtools.testing.private_servers import private_redis  # noqa: F401 - a fixture
from dunning.adapters.metrics import PrometheusCaseMetrics
from dunning.adapters.recurring_client import GrpcRecurring
from dunning.adapters.store import PostgresCases
from dunning.app.ports import Recurring
from dunning.app.statistics import OutcomeStatistics
from dunning.app.worker import AttemptWorker, WorkerConfig
from dunning.entrypoints.main import MIGRATIONS, build
from dunning.settings import DunningSettings

START = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)
# Nothing listens here: an attempt that reaches recurring finds it down.
RECURRING_DOWN = "127.0.0.1:9"


@dataclass
class Dunning:
    env: InfraEnv
    settings: DunningSettings
    host: ServiceHost
    clock: ControllableClock
    operator: Any
    events: EventCollector

    @property
    def store(self) -> PostgresCases:
        assert self.host.resources is not None
        return PostgresCases(self.host.resources.pool, self.host.resources.outbox, PrometheusCaseMetrics())

    def worker(
        self, recurring: Recurring | None = None, statistics_refresh: timedelta = timedelta(0), **config: Any
    ) -> AttemptWorker:
        """An attempt worker like the one each pod runs, on this service's connections; it asks
        `recurring` (by default the address that answers nothing)."""
        resources = self.host.resources
        assert resources is not None
        if recurring is None:
            channel = open_channel(self.settings.recurring_addr, self.settings.auth_token)
            recurring = GrpcRecurring(channel, timedelta(seconds=5))
        return AttemptWorker(
            self.store,
            recurring,
            resources.locks,
            OutcomeStatistics(self.clock, statistics_refresh, timedelta(days=180)),
            self.clock,
            WorkerConfig(**{"case_lock_ttl": timedelta(seconds=10), **config}),
            PrometheusCaseMetrics(),
        )

    async def case(self, invoice_id: str) -> pb.DunningCase:
        reply = await self.operator.GetCase(pb.GetCaseRequest(invoice_id=invoice_id))
        return reply.dunning_case

    async def case_in_state(self, invoice_id: str, state: int) -> pb.DunningCase:
        async def reached() -> pb.DunningCase | None:
            try:
                found = await self.case(invoice_id)
            except Exception:
                return None
            return found if found.state == state else None

        result: pb.DunningCase = await eventually(reached, timeout=15)
        return result


@contextlib.asynccontextmanager
async def dunning_service(env: InfraEnv, **overrides: Any) -> AsyncIterator[Dunning]:
    overrides.setdefault("worker_enabled", False)
    overrides.setdefault("recurring_addr", RECURRING_DOWN)
    overrides.setdefault("statistics_refresh", timedelta(0))
    settings = env.settings(DunningSettings, "dunning", **overrides)
    clock = ControllableClock(START)
    async with (
        EventCollector(env.infra.amqp_url, env.exchange, ["dunning.*"]) as events,
        running_service(settings, build(settings), MIGRATIONS, clock=clock) as host,
    ):
        assert host.consumer is not None
        await asyncio.wait_for(host.consumer.ready.wait(), 30)
        async with open_channel(f"127.0.0.1:{host.port}", env.token("operator")) as channel:
            yield Dunning(env, settings, host, clock, dunning_pb2_grpc.DunningServiceStub(channel), events)


@pytest.fixture
async def dunning(env: InfraEnv) -> AsyncIterator[Dunning]:
    async with dunning_service(env) as running:
        yield running


def invoice(
    invoice_id: str, merchant: str = "merchant-1", account: str = "acct-1"
) -> invoice_events.InvoiceFacts:
    return invoice_events.InvoiceFacts(
        invoice_id=invoice_id,
        subscription_id=f"sub-{invoice_id}",
        account_id=account,
        merchant_id=merchant,
        amount_due=common_pb2.Money(amount_minor=4900, currency="USD"),
    )


def payment_failed(invoice_id: str, kind: str = "soft", **facts: Any) -> invoice_events.InvoicePaymentFailed:
    failures = {
        "soft": (
            common_pb2.FAILURE_TYPE_CARDHOLDER,
            common_pb2.DECLINE_KIND_SOFT,
            "insufficient_funds",
            True,
        ),
        "hard": (common_pb2.FAILURE_TYPE_CARDHOLDER, common_pb2.DECLINE_KIND_HARD, "stolen_card", False),
        "merchant": (
            common_pb2.FAILURE_TYPE_MERCHANT,
            common_pb2.DECLINE_KIND_UNSPECIFIED,
            "invalid_credentials",
            False,
        ),
        "unreachable": (
            common_pb2.FAILURE_TYPE_GATEWAY_UNREACHABLE,
            common_pb2.DECLINE_KIND_UNSPECIFIED,
            "",
            True,
        ),
    }
    failure_type, decline_kind, code, retryable = failures[kind]
    return invoice_events.InvoicePaymentFailed(
        invoice=invoice(invoice_id, **facts),
        payment_id=f"pay-{invoice_id}",
        failure_type=failure_type,
        decline_kind=decline_kind,
        retryable=retryable,
        decline_code=code,
        attempt=1,
    )


def payment_method_updated(subscription_id: str) -> sub_events.SubscriptionPaymentMethodUpdated:
    return sub_events.SubscriptionPaymentMethodUpdated(
        subscription=sub_events.SubscriptionSnapshot(
            subscription_id=subscription_id,
            account_id="acct-1",
            status=sub_events.SUBSCRIPTION_STATE_PAST_DUE,
        ),
        method_type=common_pb2.PAYMENT_METHOD_TYPE_CARD,
    )


def fixed_policy(merchant: str, *days: int, attempts: int = 4, reminder_hours: int = 0) -> pb.RetryPolicy:
    policy = pb.RetryPolicy(
        merchant_id=merchant,
        max_attempts=attempts,
        fixed=pb.FixedSchedule(day_offsets=list(days)),
        exhausted_action=pb.EXHAUSTED_ACTION_SUSPEND,
    )
    policy.max_window.FromTimedelta(timedelta(days=14))
    policy.reminder_lead.FromTimedelta(timedelta(hours=reminder_hours))
    return policy
