"""A gateway-adapter on real PostgreSQL, Redis and RabbitMQ, with helpers to charge and count."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import aiohttp
import asyncpg

from billing.common.v1 import common_pb2
from billing.gateway.v1 import gateway_pb2 as pb
from billing.gateway.v1 import gateway_pb2_grpc
from billing_common.grpc_client import open_channel
from billing_devtools.testing.plugin import InfraEnv, running_service
from billing_devtools.testing.private_servers import private_postgres  # noqa: F401 - a fixture
from billing_devtools.testing.processes import RunningProcess, free_port, service_process
from gateway_adapter.entrypoints.main import MIGRATIONS, build
from gateway_adapter.settings import GatewaySettings

SANDBOX_SECRET = "whsec_sandbox_current_0123456789abcdef"


class Gateway:
    """A running gateway-adapter: recurring's stub, its settings, and the sandbox's own ledger."""

    def __init__(
        self,
        settings: GatewaySettings,
        address: str,
        stub: Any,
        pool: asyncpg.Pool,
        process: RunningProcess | None = None,
    ) -> None:
        self.settings = settings
        self.address = address
        self.stub = stub
        self.pool = pool
        self.process = process

    @property
    def webhook_url(self) -> str:
        return f"http://127.0.0.1:{self.settings.webhook_port}/webhooks"

    async def charge(
        self,
        key: str,
        token: str = "tok_success",
        amount: int = 1999,
        *,
        merchant: str = "merchant-a",
        method: int = common_pb2.PAYMENT_METHOD_TYPE_CARD,
        currency: str = "USD",
        reference: str = "inv-1",
    ) -> pb.ChargeResponse:
        return await self.stub.Charge(
            pb.ChargeRequest(
                merchant_id=merchant,
                payment_method=common_pb2.PaymentMethod(type=method, gateway_token=token),
                amount=common_pb2.Money(amount_minor=amount, currency=currency),
                idempotency_key=key,
                caller_reference=reference,
            )
        )

    async def gateway_calls(self, key: str | None = None, merchant: str | None = None) -> int:
        """Requests that reached the sandbox gateway, counted on its side."""
        count: int = await self.pool.fetchval(
            """
            SELECT count(*) FROM sandbox_charges
            WHERE ($1::text IS NULL OR idempotency_key = $1) AND ($2::text IS NULL OR merchant_id = $2)
            """,
            key,
            merchant,
        )
        return count

    async def post(self, source: str, body: bytes, signature: str, header: str) -> tuple[int, Any]:
        async with (
            aiohttp.ClientSession() as session,
            session.post(f"{self.webhook_url}/{source}", data=body, headers={header: signature}) as response,
        ):
            return response.status, await response.json()


def _settings(env: InfraEnv, overrides: dict[str, Any]) -> GatewaySettings:
    overrides.setdefault("webhook_port", free_port())
    overrides.setdefault("sandbox_webhook_secrets", (SANDBOX_SECRET,))
    overrides.setdefault("janitor_interval", timedelta(milliseconds=100))
    overrides.setdefault("sandbox_clearing_interval", timedelta(milliseconds=100))
    overrides.setdefault("breaker_reset_timeout", timedelta(milliseconds=500))
    return env.settings(GatewaySettings, "gateway-adapter", **overrides)


@contextlib.asynccontextmanager
async def _connected(
    env: InfraEnv, settings: GatewaySettings, address: str, process: RunningProcess | None = None
) -> AsyncIterator[Gateway]:
    pool = await env.pool(settings.schema)
    try:
        async with open_channel(address, env.token("recurring")) as channel:
            yield Gateway(settings, address, gateway_pb2_grpc.GatewayServiceStub(channel), pool, process)
    finally:
        await pool.close()


@contextlib.asynccontextmanager
async def gateway_service(env: InfraEnv, **overrides: Any) -> AsyncIterator[Gateway]:
    settings = _settings(env, overrides)
    async with (
        running_service(settings, build(settings), MIGRATIONS) as host,
        _connected(env, settings, f"127.0.0.1:{host.port}") as gateway,
    ):
        yield gateway


@contextlib.asynccontextmanager
async def gateway_process(env: InfraEnv, **overrides: Any) -> AsyncIterator[Gateway]:
    """gateway-adapter as a process of its own: one of several pods sharing the schema and Redis."""
    settings = _settings(env, overrides)
    async with (
        service_process("gateway_adapter", "GATEWAY", settings) as running,
        _connected(env, settings, running.address, running) as gateway,
    ):
        yield gateway


async def busiest_second(gateway: Gateway) -> int:
    """The most charges that arrived at the sandbox card gateway within any one second."""
    busiest: int = await gateway.pool.fetchval(
        """
        SELECT coalesce(max(n), 0) FROM (
            SELECT count(*) OVER (
                ORDER BY created_at RANGE BETWEEN CURRENT ROW AND INTERVAL '999999 microseconds' FOLLOWING
            ) AS n
            FROM sandbox_charges WHERE gateway = 'sandbox-card'
        ) windows
        """
    )
    return busiest
