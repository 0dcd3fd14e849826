"""PostgreSQL access: one schema and one login role per service, migrations, fencing checks."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import re
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import cast
from urllib.parse import urlsplit, urlunsplit

import asyncpg
from prometheus_client.core import REGISTRY, GaugeMetricFamily
from prometheus_client.registry import Collector

from billing_common.errors import FailedPrecondition

log = logging.getLogger(__name__)

_IDENT = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


class MigrationError(RuntimeError):
    pass


class StaleFencingToken(FailedPrecondition):
    """A writer presented a token older than one already seen: it lost its lock."""


def quote_ident(name: str) -> str:
    if not _IDENT.match(name):
        raise ValueError(f"{name!r} is not a safe SQL identifier")
    return f'"{name}"'


def dsn_with_user(dsn: str, user: str, password: str | None = None) -> str:
    """The same server and database as `dsn`, logging in as `user`."""
    parts = urlsplit(dsn)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = (
        user + (f":{password}" if password else "") + "@" + host + (f":{parts.port}" if parts.port else "")
    )
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


async def _init_connection(conn: asyncpg.Connection) -> None:
    for kind in ("json", "jsonb"):
        await conn.set_type_codec(kind, encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


class _PoolMetrics(Collector):
    """Connections of the process's pools, read when Prometheus scrapes (no loop, no query)."""

    def __init__(self) -> None:
        self.pools: dict[str, asyncpg.Pool] = {}

    def collect(self) -> Iterator[GaugeMetricFamily]:
        used = GaugeMetricFamily(
            "billing_db_pool_connections", "Pooled PostgreSQL connections, in use or idle", labels=["state"]
        )
        most = GaugeMetricFamily(
            "billing_db_pool_max_connections", "The most connections the pool opens (DB_POOL_MAX)"
        )
        for pool in self.pools.values():
            if pool.is_closing():
                continue
            idle = pool.get_idle_size()
            used.add_metric(["in_use"], pool.get_size() - idle)
            used.add_metric(["idle"], idle)
            most.add_metric([], pool.get_max_size())
        yield used
        yield most


_POOL_METRICS = _PoolMetrics()
REGISTRY.register(_POOL_METRICS)


async def create_pool(
    dsn: str, schema: str, *, application: str, min_size: int = 1, max_size: int = 10
) -> asyncpg.Pool:
    """A pool whose connections see only `schema` by default; its size is exported as metrics."""
    pool = await asyncpg.create_pool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        init=_init_connection,
        server_settings={"search_path": schema, "application_name": application},
    )
    _POOL_METRICS.pools[application] = pool
    return pool


@contextlib.asynccontextmanager
async def transaction(pool: asyncpg.Pool) -> AsyncIterator[asyncpg.Connection]:
    """A pooled connection inside a transaction, typed as the connection the helpers here take."""
    async with pool.acquire() as proxy, proxy.transaction():
        yield cast(asyncpg.Connection, proxy)


@contextlib.asynccontextmanager
async def connection(pool: asyncpg.Pool) -> AsyncIterator[asyncpg.Connection]:
    async with pool.acquire() as proxy:
        yield cast(asyncpg.Connection, proxy)


async def provision(admin_dsn: str, schema: str, role: str, password: str | None = None) -> None:
    """Create the service's login role and its schema, owned by it and closed to everyone else.

    Idempotent and safe when many pods start at once (serialised by an advisory lock).
    """
    conn = await asyncpg.connect(admin_dsn)
    try:
        await conn.execute("SELECT pg_advisory_lock(hashtextextended('billing:provision', 0))")
        try:
            exists = await conn.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", role)
            if not exists:
                await conn.execute(f"CREATE ROLE {quote_ident(role)} LOGIN")
            if password:
                await conn.execute(f"ALTER ROLE {quote_ident(role)} PASSWORD {_literal(password)}")
            await conn.execute(
                f"CREATE SCHEMA IF NOT EXISTS {quote_ident(schema)} AUTHORIZATION {quote_ident(role)}"
            )
            await conn.execute(f"REVOKE ALL ON SCHEMA {quote_ident(schema)} FROM PUBLIC")
            await conn.execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC")
        finally:
            await conn.execute("SELECT pg_advisory_unlock(hashtextextended('billing:provision', 0))")
    finally:
        await conn.close()


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


@dataclass(frozen=True)
class Migration:
    version: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def common_migrations() -> list[Migration]:
    folder = resources.files("billing_common") / "migrations"
    entries = sorted((e for e in folder.iterdir() if e.name.endswith(".sql")), key=lambda e: e.name)
    return [Migration(f"common/{e.name}", e.read_text()) for e in entries]


def migrations_in(folder: Path) -> list[Migration]:
    return [Migration(path.name, path.read_text()) for path in sorted(folder.glob("*.sql"))]


async def migrate(conn: asyncpg.Connection, schema: str, migrations: Sequence[Migration]) -> list[str]:
    """Apply what is missing, in order, each in its own transaction, under a per-schema advisory lock.

    An applied migration whose text changed is refused: history is never rewritten silently.
    Returns the versions this call applied.
    """
    lock_key = f"billing:migrate:{schema}"
    await conn.execute("SELECT pg_advisory_lock(hashtextextended($1, 0))", lock_key)
    try:
        await conn.execute(f"SET search_path TO {quote_ident(schema)}")
        await conn.execute(
            """CREATE TABLE IF NOT EXISTS schema_migrations (
                   version TEXT PRIMARY KEY,
                   checksum TEXT NOT NULL,
                   applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"""
        )
        applied = {
            r["version"]: r["checksum"]
            for r in await conn.fetch("SELECT version, checksum FROM schema_migrations")
        }
        done: list[str] = []
        for migration in migrations:
            recorded = applied.get(migration.version)
            if recorded is not None:
                if recorded != migration.checksum:
                    raise MigrationError(
                        f"migration {migration.version} in schema {schema} was edited after it was applied"
                    )
                continue
            async with conn.transaction():
                await conn.execute(migration.sql)
                await conn.execute(
                    "INSERT INTO schema_migrations (version, checksum) VALUES ($1, $2)",
                    migration.version,
                    migration.checksum,
                )
            log.info("applied migration", extra={"schema": schema, "version": migration.version})
            done.append(migration.version)
        return done
    finally:
        await conn.execute("SELECT pg_advisory_unlock(hashtextextended($1, 0))", lock_key)


async def check_fence(conn: asyncpg.Connection, resource: str, token: int) -> None:
    """Record `token` for `resource`, or refuse if a newer holder has already written.

    Call it inside the transaction of the protected write: the row lock it takes serialises
    writers, and a stale holder's whole transaction rolls back.
    """
    accepted = await conn.fetchval(
        """INSERT INTO fencing_tokens (resource, token) VALUES ($1, $2)
           ON CONFLICT (resource) DO UPDATE SET token = EXCLUDED.token
           WHERE fencing_tokens.token <= EXCLUDED.token
           RETURNING token""",
        resource,
        token,
    )
    if accepted is None:
        raise StaleFencingToken(f"fencing token {token} for {resource} is stale: the lock has a newer holder")
