"""Dependencies failing under the host: the caller hears UNAVAILABLE, a lost commit is told apart."""

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from billing_common import db
from billing_common.grpc_server import DEPENDENCY_UNAVAILABLE
from billing_common.service import Registration, Resources, ServiceParts
from billing_common.settings import CommonSettings
from billing_devtools.testing.echo import SERVICE, echo_stub
from billing_devtools.testing.faultproxy import FaultProxy
from billing_devtools.testing.plugin import InfraEnv, eventually, running_service
from billing_devtools.testing.servers import PostgresCluster, outage

NO_MIGRATIONS = Path(__file__).parent / "no-migrations"


def _reads_the_database(resources: Resources) -> Any:
    """An Echo method that answers with a value read from PostgreSQL."""

    async def read(_request: bytes, _context: Any) -> bytes:
        return str(await resources.pool.fetchval("SELECT 40 + 2")).encode()

    def add(_servicer: Any, server: Any) -> None:
        handler = grpc.unary_unary_rpc_method_handler(read, lambda b: b, lambda b: b)
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, {"Echo": handler}),))

    return add


@contextlib.asynccontextmanager
async def _lifespan(resources: Resources) -> AsyncIterator[ServiceParts]:
    registration = Registration(_reads_the_database(resources), None, SERVICE, {"Echo": {"recurring"}})
    yield ServiceParts([registration])


async def test_a_call_whose_database_is_down_is_answered_unavailable_and_served_again_after(
    private_postgres: tuple[InfraEnv, PostgresCluster],
) -> None:
    env, cluster = private_postgres
    settings = env.settings(CommonSettings, "echo")
    async with (
        running_service(settings, _lifespan, NO_MIGRATIONS) as host,
        grpc.aio.insecure_channel(f"127.0.0.1:{host.port}") as channel,
    ):
        call = echo_stub(channel)
        metadata = [("authorization", f"Bearer {env.token('recurring')}")]
        health = health_pb2_grpc.HealthStub(channel)

        async def serving() -> bool:
            reply = await health.Check(health_pb2.HealthCheckRequest(service=""))
            return reply.status == health_pb2.HealthCheckResponse.SERVING

        assert await call(b"", metadata=metadata) == b"42"
        async with outage(cluster):
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await call(b"", metadata=metadata)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
            assert refused.value.details() == DEPENDENCY_UNAVAILABLE
            await eventually(lambda: _not(serving), timeout=15)
        await eventually(serving, timeout=15)
        assert await call(b"", metadata=metadata) == b"42"


async def _not(check: Any) -> bool:
    return not await check()


@contextlib.asynccontextmanager
async def ledger_behind_a_proxy(env: InfraEnv) -> AsyncIterator[tuple[FaultProxy, asyncpg.Pool]]:
    """A pool whose connections go through a proxy that can cut them at a chosen statement."""
    schema = f"ledger_{env.run_id}"
    env.schemas.append(schema)
    await db.provision(env.infra.postgres_admin_url, schema, schema)
    direct = db.dsn_with_user(env.infra.postgres_admin_url, schema)
    async with FaultProxy(direct) as proxy:
        pool = await db.create_pool(proxy.url, schema, application="test")
        try:
            await pool.execute("CREATE TABLE entries (id TEXT PRIMARY KEY)")
            yield proxy, pool
        finally:
            await pool.close()


async def test_a_commit_whose_answer_is_lost_is_told_apart_from_a_write_that_failed(env: InfraEnv) -> None:
    async with ledger_behind_a_proxy(env) as (proxy, pool):
        proxy.cut_before(b"INSERT INTO entries")
        with pytest.raises(Exception) as failed_write:
            async with db.transaction(pool) as conn:
                await conn.execute("INSERT INTO entries VALUES ('never')")
        assert not isinstance(failed_write.value, db.CommitOutcomeUnknown)

        proxy.cut_after(b"COMMIT")
        with pytest.raises(db.CommitOutcomeUnknown):
            async with db.transaction(pool) as conn:
                await conn.execute("INSERT INTO entries VALUES ('stored')")

        proxy.cut_before(b"COMMIT")
        with pytest.raises(db.CommitOutcomeUnknown):
            async with db.transaction(pool) as conn:
                await conn.execute("INSERT INTO entries VALUES ('not stored')")

        assert proxy.cuts == 3
        assert [r["id"] for r in await pool.fetch("SELECT id FROM entries")] == ["stored"]


async def test_a_committed_transaction_returns_its_connection_with_no_round_trip_left_to_fail(
    env: InfraEnv,
) -> None:
    """Once the commit is through, returning the connection asks nothing more of the server (no
    session reset): nothing left can fail and turn a stored write into an error, after which a
    caller would take back what it counted while the ledger holds it."""
    async with ledger_behind_a_proxy(env) as (proxy, pool):
        proxy.cut_before(b"pg_advisory_unlock_all")
        async with db.transaction(pool) as conn:
            await conn.execute("INSERT INTO entries VALUES ('stored')")

        async with db.transaction(pool) as conn:
            stored = [r["id"] for r in await conn.fetch("SELECT id FROM entries")]

        assert stored == ["stored"]
        assert proxy.cuts == 0


async def test_a_connection_returned_after_a_failure_has_its_session_reset(env: InfraEnv) -> None:
    async with ledger_behind_a_proxy(env) as (_, pool):
        with pytest.raises(ZeroDivisionError):
            async with db.connection(pool) as conn:
                backend = await conn.fetchval("SELECT pg_backend_pid()")
                await conn.execute("SET statement_timeout = '1234ms'")
                1 / 0  # noqa: B018 - the holder fails after changing its session

        async with db.connection(pool) as conn:
            assert await conn.fetchval("SELECT pg_backend_pid()") == backend
            assert await conn.fetchval("SHOW statement_timeout") == "0"
