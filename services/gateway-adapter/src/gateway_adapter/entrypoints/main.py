"""Entry point: `python -m gateway_adapter.entrypoints.main`."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path

from aiohttp import web

from billing.gateway.v1 import gateway_pb2_grpc
from billing_common.pacing import RedisPacer, check_headroom
from billing_common.service import Background, Lifespan, Registration, Resources, ServiceParts, run_service
from billing_common.settings import SettingsError
from billing_common.suite_clock import pause
from gateway_adapter.adapters.metrics import PrometheusPaymentMetrics
from gateway_adapter.adapters.payment_store import PostgresPayments, due_payment_work
from gateway_adapter.adapters.sandbox import SandboxBehaviour, SandboxClearing, SandboxGateway
from gateway_adapter.adapters.stripe_gateway import StripeGateway
from gateway_adapter.app.breakers import CircuitBreakers
from gateway_adapter.app.notices import Notices
from gateway_adapter.app.payments import Payments, Policy
from gateway_adapter.app.ports import Gateway
from gateway_adapter.domain.limits import LimitError, check_rate_limits
from gateway_adapter.domain.routing import RouteError, Router
from gateway_adapter.entrypoints.servicer import ACCESS, GatewayServicer
from gateway_adapter.entrypoints.webhooks import webhook_app
from gateway_adapter.settings import GatewaySettings

MIGRATIONS = Path(__file__).resolve().parents[3] / "migrations"
SERVICE_NAME = "billing.gateway.v1.GatewayService"
# Every gateway by name, known before any connection so that settings naming one are checked first.
SANDBOX_GATEWAYS = ("sandbox-card", "sandbox-ach")
GATEWAYS = (*SANDBOX_GATEWAYS, StripeGateway.name)
# Room after the slowest gateway call for the answer to be recorded and sent.
DRAIN_MARGIN = timedelta(seconds=5)


def build(settings: GatewaySettings) -> Lifespan:
    try:
        router = Router(settings.routes, GATEWAYS)
    except RouteError as error:
        raise SettingsError(f"GATEWAY_ROUTES: {error}") from None
    try:
        check_rate_limits(settings.rate_limits, GATEWAYS)
    except LimitError as error:
        raise SettingsError(f"GATEWAY_RATE_LIMITS: {error}") from None
    check_headroom(settings.rate_headroom_percent, "GATEWAY_RATE_HEADROOM_PERCENT")
    if not all(settings.stripe_api_keys.values()):
        raise SettingsError("GATEWAY_STRIPE_API_KEYS: every credentials ref needs its key (<ref>=<key>)")

    @asynccontextmanager
    async def lifespan(r: Resources) -> AsyncIterator[ServiceParts]:
        behaviour = SandboxBehaviour(
            settings.sandbox_latency, settings.sandbox_rate_limit, settings.sandbox_ach_clears_after
        )
        gateways: list[Gateway] = [
            *(SandboxGateway(name, r.pool, r.clock, behaviour) for name in SANDBOX_GATEWAYS),
            StripeGateway(
                settings.stripe_api_base,
                settings.stripe_api_keys,
                settings.stripe_timeout.total_seconds(),
            ),
        ]
        store = PostgresPayments(r.pool, r.outbox)
        metrics = PrometheusPaymentMetrics()
        payments = Payments(
            store,
            {gateway.name: gateway for gateway in gateways},
            router,
            CircuitBreakers(settings.breaker_fail_max, settings.breaker_reset_timeout, r.clock, metrics),
            # Shared by every pod through Redis, so the limit holds however many pods there are.
            RedisPacer(r.redis, settings.namespace, settings.rate_limits, settings.rate_headroom_percent),
            r.clock,
            Policy(
                in_flight_wait=settings.in_flight_wait,
                processing_timeout=settings.processing_timeout,
                unknown_check_schedule=settings.unknown_check_schedule,
                idempotency_retention=settings.idempotency_retention,
                interactive_max_wait=settings.interactive_max_wait,
                batch_pacing_horizon=settings.batch_pacing_horizon,
                batch_max_wait=settings.batch_max_wait,
            ),
            metrics,
        )
        notices = Notices(store, r.clock, metrics)

        async def janitor() -> None:
            while True:
                while await payments.resolve_unknown():
                    pass
                await payments.forget_old_keys()
                await pause(r.clock, settings.janitor_interval.total_seconds())

        async def serve_webhooks() -> None:
            app = webhook_app(
                notices, r.clock, settings.stripe_webhook_secrets, settings.sandbox_webhook_secrets
            )
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            try:
                await web.TCPSite(runner, settings.webhook_host, settings.webhook_port).start()
                await asyncio.Event().wait()
            finally:
                await runner.cleanup()

        clearing = SandboxClearing(
            r.pool,
            r.clock,
            settings.sandbox_notice_url or f"http://127.0.0.1:{settings.webhook_port}/webhooks/sandbox",
            settings.sandbox_notice_secret or next(iter(settings.sandbox_webhook_secrets), ""),
            settings.sandbox_clearing_interval,
        )
        yield ServiceParts(
            [
                Registration(
                    gateway_pb2_grpc.add_GatewayServiceServicer_to_server,
                    GatewayServicer(payments),
                    SERVICE_NAME,
                    ACCESS,
                )
            ],
            background=[
                Background(janitor),
                Background(payments.keep_leases),
                Background(serve_webhooks),
                Background(clearing.run_forever),
            ],
            due_work=[due_payment_work(r.pool)],
            drain_at_least=max(settings.stripe_timeout, settings.sandbox_latency) + DRAIN_MARGIN,
        )

    return lifespan


def main() -> None:
    run_service("GATEWAY", GatewaySettings, build, MIGRATIONS)


if __name__ == "__main__":
    main()
