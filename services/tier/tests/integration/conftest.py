"""A tier service on real PostgreSQL, Redis and RabbitMQ, and helpers to act as operator and callers."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import Any

import asyncpg
import pytest

from billing.tier.v1 import tier_pb2 as pb
from billing.tier.v1 import tier_pb2_grpc
from billing_common.clock import Clock
from billing_common.grpc_client import open_channel
from billing_devtools.testing.plugin import InfraEnv, eventually, running_service
from billing_devtools.testing.private_servers import private_redis  # noqa: F401 - a fixture
from tier.entrypoints.main import MIGRATIONS, build
from tier.settings import TierSettings


class Tier:
    """A running tier service (one pod): the operator's stub, the web console's stub, its settings."""

    def __init__(self, env: InfraEnv, settings: TierSettings, operator: Any, caller: Any) -> None:
        self.env = env
        self.settings = settings
        self.operator = operator
        self.caller = caller

    async def admin(self) -> asyncpg.Connection:
        """A superuser connection with the service's schema on the search path."""
        conn = await asyncpg.connect(self.env.infra.postgres_admin_url)
        await conn.execute(f'SET search_path TO "{self.settings.schema}"')
        return conn

    async def count(self, table: str, where: str = "true") -> int:
        conn = await self.admin()
        try:
            return int(await conn.fetchval(f"SELECT count(*) FROM {table} WHERE {where}"))
        finally:
            await conn.close()


def tier_settings(env: InfraEnv, **overrides: Any) -> TierSettings:
    values: dict[str, Any] = {
        "scan_schedule_full": None,
        "scan_schedule_sso": None,
        "scan_schedule_api": None,
        "worker_poll_interval": timedelta(milliseconds=100),
        "model_refresh_interval": timedelta(seconds=1),
        **overrides,
    }
    return env.settings(TierSettings, "tier", **values)


@contextlib.asynccontextmanager
async def tier_service(
    env: InfraEnv, *, clock: Clock | None = None, settings: TierSettings | None = None, **overrides: Any
) -> AsyncIterator[Tier]:
    settings = settings or tier_settings(env, **overrides)
    async with running_service(settings, build(settings), MIGRATIONS, clock=clock) as host:
        target = f"127.0.0.1:{host.port}"
        async with (
            open_channel(target, env.token("operator")) as admin,
            open_channel(target, env.token("console")) as other,
        ):
            yield Tier(
                env, settings, tier_pb2_grpc.TierServiceStub(admin), tier_pb2_grpc.TierServiceStub(other)
            )


@pytest.fixture
async def tier(env: InfraEnv) -> AsyncIterator[Tier]:
    async with tier_service(env) as running:
        yield running


def distributor(distributor_id: str, *, direct: bool = False, active: bool = True) -> pb.Distributor:
    return pb.Distributor(
        distributor_id=distributor_id, name=distributor_id.title(), direct=direct, active=active
    )


def end_user(end_user_id: str, distributor_id: str = "", *, active: bool = True) -> pb.EndUser:
    return pb.EndUser(
        end_user_id=end_user_id, distributor_id=distributor_id, name=end_user_id.title(), active=active
    )


def database(
    database_id: str,
    end_user_id: str,
    *,
    sso: bool = True,
    api: bool = True,
    mode: int = pb.INVENTORY_MODE_BASIC,
    active: bool = True,
) -> pb.Database:
    return pb.Database(
        database_id=database_id,
        end_user_id=end_user_id,
        company_name=f"{database_id} Inc",
        schema_name=database_id.replace("-", "_"),
        inventory_mode=mode,  # type: ignore[arg-type]
        sso_access=sso,
        rest_api_access=api,
        active=active,
    )


def signal(account_id: str, kind: int, value: str, observed_at: datetime, source: str = "push") -> pb.Signal:
    message = pb.Signal(account_id=account_id, kind=kind, value=value, source=source)  # type: ignore[arg-type]
    message.observed_at.FromDatetime(observed_at)
    return message


async def build_estate(tier: Tier) -> None:
    """Distributor "dist" with end users "alpha" (one SSO-capable database) and "beta" (already on SSO);
    a standalone end user "solo"."""
    await tier.operator.UpsertDistributors(pb.UpsertDistributorsRequest(distributors=[distributor("dist")]))
    await tier.operator.UpsertEndUsers(
        pb.UpsertEndUsersRequest(
            end_users=[end_user("alpha", "dist"), end_user("beta", "dist"), end_user("solo")]
        )
    )
    await tier.operator.UpsertDatabases(
        pb.UpsertDatabasesRequest(
            databases=[
                database("alpha-db", "alpha"),
                database("beta-db", "beta"),
                database("solo-db", "solo", sso=False, api=False),
            ]
        )
    )


async def run_scan(tier: Tier, kind: int, key: str, *, timeout: float = 30) -> pb.Scan:
    """Queue a scan and wait until a worker finished it."""
    reply = await tier.operator.RunScan(pb.RunScanRequest(kind=kind, idempotency_key=key))  # type: ignore[arg-type]
    return await finished(tier, reply.scan.scan_id, timeout=timeout)


async def finished(tier: Tier, scan_id: str, *, timeout: float = 30) -> pb.Scan:
    async def done() -> pb.Scan | None:
        scan = (await tier.caller.GetScan(pb.GetScanRequest(scan_id=scan_id))).scan
        return scan if scan.state in (pb.SCAN_STATE_COMPLETED, pb.SCAN_STATE_FAILED) else None

    scan: pb.Scan = await eventually(done, timeout=timeout)
    return scan


async def tier_of(tier: Tier, account_id: str) -> int:
    reply = await tier.caller.GetAccountTier(pb.GetAccountTierRequest(account_id=account_id))
    return int(reply.account_tier.tier)
