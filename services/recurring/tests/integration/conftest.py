"""recurring on real PostgreSQL, Redis and RabbitMQ, with quota and gateway-adapter as real processes."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import AsyncIterator
from datetime import date, timedelta
from typing import Any

import asyncpg
import pytest

from billing.common.v1 import common_pb2 as common
from billing.recurring.v1 import recurring_pb2 as pb
from billing.recurring.v1 import recurring_pb2_grpc
from billing_common import db
from billing_common.grpc_client import open_channel
from billing_common.service import ServiceHost
from billing_common.settings import CommonSettings
from billing_devtools.testing.plugin import InfraEnv, eventually, issue_token, running_service
from billing_devtools.testing.private_servers import private_redis  # noqa: F401 - a fixture
from billing_devtools.testing.processes import RunningProcess, free_port, service_process
from recurring.entrypoints.main import MIGRATIONS, build
from recurring.settings import RecurringSettings

CARD = common.PAYMENT_METHOD_TYPE_CARD
ACH = common.PAYMENT_METHOD_TYPE_ACH


@dataclasses.dataclass
class Deps:
    """quota and gateway-adapter as processes, and the schema of each service for counting."""

    env: InfraEnv
    quota: RunningProcess
    gateway: RunningProcess

    @property
    def gateway_schema(self) -> str:
        return f"gateway_adapter_{self.env.run_id}"

    @property
    def recurring_schema(self) -> str:
        return f"recurring_{self.env.run_id}"

    def recurring_settings(self, **overrides: Any) -> RecurringSettings:
        values: dict[str, Any] = {
            "quota_addr": self.quota.address,
            "gateway_adapter_addr": self.gateway.address,
            "scheduler_interval": timedelta(milliseconds=100),
            "worker_idle_poll": timedelta(milliseconds=50),
            "defer_delay": timedelta(seconds=1),
            "max_catch_up_days": 1,
            **overrides,
        }
        return self.env.settings(RecurringSettings, "recurring", **values)

    async def admin(self) -> asyncpg.Connection:
        return await asyncpg.connect(self.env.infra.postgres_admin_url)

    async def sandbox_charges(self, where: str = "true", *args: Any) -> list[asyncpg.Record]:
        conn = await self.admin()
        try:
            return await conn.fetch(
                f"SELECT * FROM {db.quote_ident(self.gateway_schema)}.sandbox_charges WHERE {where}", *args
            )
        finally:
            await conn.close()

    async def recurring_rows(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        conn = await self.admin()
        try:
            await conn.execute(f"SET search_path TO {db.quote_ident(self.recurring_schema)}")
            return await conn.fetch(sql, *args)
        finally:
            await conn.close()

    async def assert_ledger_balances(self) -> None:
        """Every ledger transaction sums to zero, and so does the whole ledger."""
        unbalanced = await self.recurring_rows(
            """SELECT ledger_transaction_id FROM ledger_entries GROUP BY ledger_transaction_id
               HAVING sum(amount_minor) <> 0"""
        )
        assert unbalanced == []
        (total,) = await self.recurring_rows("SELECT coalesce(sum(amount_minor), 0) AS s FROM ledger_entries")
        assert total["s"] == 0


@contextlib.asynccontextmanager
async def dependencies(
    env: InfraEnv, *, quota_on_test_clock: bool = False, **gateway_env: str
) -> AsyncIterator[Deps]:
    """quota and gateway-adapter; quota on the test's clock when recurring's moves must reach it."""
    gateway_extra = {
        "GATEWAY_WEBHOOK_PORT": str(free_port()),
        "GATEWAY_SANDBOX_ACH_CLEARS_AFTER": "1s",
        "GATEWAY_SANDBOX_CLEARING_INTERVAL": "0.2s",
        "GATEWAY_SANDBOX_WEBHOOK_SECRETS": "test-sandbox-webhook-secret",
        "GATEWAY_SANDBOX_NOTICE_SECRET": "test-sandbox-webhook-secret",
        **gateway_env,
    }
    async with (
        service_process(
            "quota", "QUOTA", env.settings(CommonSettings, "quota", test_clock=quota_on_test_clock)
        ) as quota,
        service_process(
            "gateway_adapter", "GATEWAY", env.settings(CommonSettings, "gateway-adapter"), gateway_extra
        ) as gateway,
    ):
        deps = Deps(env, quota, gateway)
        yield deps
        await deps.assert_ledger_balances()


@pytest.fixture
async def deps(env: InfraEnv) -> AsyncIterator[Deps]:
    async with dependencies(env) as found:
        yield found


class Recurring:
    """A running recurring service and stubs as the operator and as dunning."""

    def __init__(self, host: ServiceHost, operator: Any, dunning: Any) -> None:
        self.host = host
        self.operator = operator
        self.dunning = dunning


@contextlib.asynccontextmanager
async def recurring_service(settings: RecurringSettings) -> AsyncIterator[Recurring]:
    async with running_service(settings, build(settings), MIGRATIONS) as host:
        target = f"127.0.0.1:{host.port}"
        async with (
            open_channel(target, issue_token("operator")) as admin,
            open_channel(target, issue_token("dunning")) as dunning,
        ):
            yield Recurring(
                host,
                recurring_pb2_grpc.RecurringServiceStub(admin),
                recurring_pb2_grpc.RecurringServiceStub(dunning),
            )


def pb_date(day: date) -> common.Date:
    return common.Date(year=day.year, month=day.month, day=day.day)


def custom(
    account: str,
    amount: int,
    frequency: common.BillingFrequency.ValueType,
    start: date,
    *,
    token: str = "tok_success",
    method: common.PaymentMethodType.ValueType = CARD,
    merchant: str = "merchant-1",
    anchor: int = 0,
) -> pb.CreateSubscriptionRequest:
    return pb.CreateSubscriptionRequest(
        account_id=account,
        merchant_id=merchant,
        custom_amount=common.Money(amount_minor=amount, currency="USD"),
        frequency=frequency,
        start_date=pb_date(start),
        billing_anchor_day=anchor,
        payment_method=common.PaymentMethod(type=method, gateway_token=token),
        idempotency_key=f"create-{account}",
    )


async def run_until_settled(
    stub: Any, day: date, kind: pb.RunKind.ValueType = pb.RUN_KIND_DAILY, timeout: float = 60
) -> pb.Run:
    """Start (or re-run) the date's run and wait until it has no open items."""
    run = (await stub.RunBilling(pb.RunBillingRequest(billing_date=pb_date(day), kind=kind))).run

    async def settled() -> pb.Run | None:
        found = (await stub.GetRun(pb.GetRunRequest(run_id=run.run_id))).run
        return found if found.state in (pb.RUN_STATE_COMPLETED, pb.RUN_STATE_HALTED) else None

    result: pb.Run = await eventually(settled, timeout=timeout)
    return result
