"""PostgreSQL access: one schema and one login role per service, migrations, fencing checks."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import re
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from importlib import resources
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlsplit, urlunsplit

import asyncpg
from prometheus_client.core import REGISTRY, GaugeMetricFamily
from prometheus_client.registry import Collector

from billing_common.errors import FailedPrecondition, Unavailable
from billing_common.faults import is_dependency_failure
from billing_common.locks import Lease

log = logging.getLogger(__name__)

_IDENT = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


class MigrationError(RuntimeError):
    pass


class SchemaBehind(RuntimeError):
    """The schema lacks migrations this code needs: they have not been applied yet."""


class StaleFencingToken(FailedPrecondition):
    """A writer presented a token older than one already seen: it lost its lock."""


class CommitOutcomeUnknown(Unavailable):
    """The connection failed while COMMIT was under way: the transaction may or may not be applied.

    Every other failure inside `transaction` means nothing was written; this one alone does not,
    so whoever undoes side effects of a failed write (a counter, a reservation) must not undo them
    on it, but find out later (the same idempotency key again) what was stored.
    """


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


class PooledConnection(asyncpg.Connection):
    """A pooled connection that knows whether its last holder ended cleanly, through `transaction`
    or `connection`, which keep nothing in the session (see `connection`)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._ended_cleanly = False

    def ended_cleanly(self) -> None:
        self._ended_cleanly = True

    def take_ended_cleanly(self) -> bool:
        ended, self._ended_cleanly = self._ended_cleanly, False
        return ended


def _ended_cleanly(proxy: object) -> None:
    mark = getattr(proxy, "ended_cleanly", None)  # None: a pool made elsewhere
    if mark is not None:
        mark()


async def _reset_session(conn: asyncpg.Connection) -> None:
    """Reset a returned connection's session unless its holder ended cleanly: one round trip (and
    one more commit on the server) less for every pooled call. After a failure, or from a holder
    that took the pool's connection itself, the full reset runs."""
    if isinstance(conn, PooledConnection) and conn.take_ended_cleanly():
        return
    await conn.execute(conn.get_reset_query())


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
        connection_class=PooledConnection,
        reset=_reset_session,
        server_settings={"search_path": schema, "application_name": application},
    )
    _POOL_METRICS.pools[application] = pool
    return pool


# What runs once a transaction commits, by the connection the transaction runs on.
_AFTER_COMMIT: dict[int, list[Callable[[], None]]] = {}


def after_commit(conn: asyncpg.Connection, callback: Callable[[], None]) -> None:
    """Run `callback` once the transaction `conn` is in (opened by `transaction` or `committing`)
    has committed, never if it rolls back: what it sets going (a relay woken to publish the rows
    just written, a log of what was decided) finds the change stored. On a connection outside such
    a transaction it runs at once."""
    hooks = _AFTER_COMMIT.get(id(conn))
    if hooks is None:
        callback()
    else:
        hooks.append(callback)


@contextlib.asynccontextmanager
async def committing(conn: asyncpg.Connection) -> AsyncIterator[asyncpg.Connection]:
    """A transaction on a connection the caller holds, whose `after_commit` callbacks run once it
    has committed; inside another one, a savepoint whose callbacks wait for the outer commit."""
    if id(conn) in _AFTER_COMMIT:
        async with conn.transaction():
            yield conn
        return
    hooks = _AFTER_COMMIT[id(conn)] = []
    try:
        async with conn.transaction():
            yield conn
    finally:
        del _AFTER_COMMIT[id(conn)]
    for hook in hooks:
        try:
            hook()
        except Exception:  # the change is stored: its caller must not take it for failed
            log.exception("a callback after a commit failed")


@contextlib.asynccontextmanager
async def transaction(pool: asyncpg.Pool) -> AsyncIterator[asyncpg.Connection]:
    """A pooled connection inside a transaction (`committing`), typed as the connection the
    helpers here take.

    A dependency failure during the commit itself is raised as `CommitOutcomeUnknown`.
    """
    acquired = pool.acquire()
    proxy = await acquired.__aenter__()
    committed = False
    try:
        commit_began = False
        try:
            async with committing(cast(asyncpg.Connection, proxy)) as conn:
                yield conn
                commit_began = True
            committed = True
            _ended_cleanly(proxy)
        except Exception as error:
            if commit_began and is_dependency_failure(error):
                raise CommitOutcomeUnknown(
                    "the database failed during a commit: the change may or may not be stored; "
                    "retry with the same idempotency key"
                ) from error
            raise
    finally:
        try:
            await acquired.__aexit__(None, None, None)
        except Exception as error:
            # Returning a connection may still take a round trip (a reset after a failure, a close
            # after the pool's query limit); once the commit is through, that failing says nothing
            # about the write, which is stored.
            if not (committed and is_dependency_failure(error)):
                raise
            log.warning("a connection died after its commit", extra={"error": repr(error)})


async def plan_each_call(conn: asyncpg.Connection) -> None:
    """Have the rest of this transaction's statements planned for their own values and the tables
    as they are now, not run on a plan the connection kept. PostgreSQL may keep one plan for a
    prepared statement, costed when it was made: one made while a table was nearly empty (and
    without statistics, which a server without autovacuum never gathers) can read the whole table
    at every call once it has grown. For keyed statements on tables that grow fast."""
    await conn.execute("SET LOCAL plan_cache_mode = force_custom_plan")


@contextlib.asynccontextmanager
async def connection(pool: asyncpg.Pool) -> AsyncIterator[asyncpg.Connection]:
    """A pooled connection for statements outside a transaction.

    Pooled connections keep no session state, as a transaction-mode pooler (PgBouncer) would not
    keep it either: what a holder needs it sets inside a transaction (SET LOCAL, transaction-level
    advisory locks). So a connection whose holder ended cleanly here or in `transaction` goes back
    to the pool without a session reset.
    """
    async with pool.acquire() as proxy:
        yield cast(asyncpg.Connection, proxy)
        _ended_cleanly(proxy)


async def provision(
    admin_dsn: str,
    schema: str,
    role: str,
    password: str | None = None,
    *,
    runtime_role: str | None = None,
    runtime_password: str | None = None,
) -> None:
    """Create the service's schema, owned by `role` and closed to everyone else.

    With a `runtime_role` as well, that second login role is what the service runs as: it gets
    rows, not DDL (granted by `migrate`), and finds its schema without a startup parameter, which
    a transaction-mode pooler (PgBouncer) does not pass on. A schema the runtime role owned until
    now is handed to `role`. Idempotent and safe when many pods start at once (advisory lock).
    """
    conn = await asyncpg.connect(admin_dsn)
    try:
        await conn.execute("SELECT pg_advisory_lock(hashtextextended('billing:provision', 0))")
        try:
            await _login_role(conn, role, password)
            await conn.execute(
                f"CREATE SCHEMA IF NOT EXISTS {quote_ident(schema)} AUTHORIZATION {quote_ident(role)}"
            )
            if runtime_role and runtime_role != role:
                await _login_role(conn, runtime_role, runtime_password)
                owner = await conn.fetchval(
                    "SELECT nspowner::regrole::text FROM pg_namespace WHERE nspname = $1", schema
                )
                if owner == runtime_role:
                    await conn.execute(
                        f"REASSIGN OWNED BY {quote_ident(runtime_role)} TO {quote_ident(role)}"
                    )
                await conn.execute(
                    f"ALTER ROLE {quote_ident(runtime_role)} SET search_path TO {quote_ident(schema)}"
                )
            await conn.execute(f"REVOKE ALL ON SCHEMA {quote_ident(schema)} FROM PUBLIC")
            await conn.execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC")
        finally:
            await conn.execute("SELECT pg_advisory_unlock(hashtextextended('billing:provision', 0))")
    finally:
        await conn.close()


async def _login_role(conn: asyncpg.Connection, role: str, password: str | None) -> None:
    if not await conn.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", role):
        await conn.execute(f"CREATE ROLE {quote_ident(role)} LOGIN")
    if password:
        await conn.execute(f"ALTER ROLE {quote_ident(role)} PASSWORD {_literal(password)}")


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


async def migrate(
    conn: asyncpg.Connection,
    schema: str,
    migrations: Sequence[Migration],
    *,
    lock_timeout: timedelta | None = None,
    runtime_role: str | None = None,
) -> list[str]:
    """Apply what is missing, in order, each in its own transaction, under a per-schema advisory lock.

    An applied migration whose text changed is refused: history is never rewritten silently. With
    `lock_timeout`, a statement that waits longer for a table lock fails instead of queueing every
    query of the running pods behind it. A `runtime_role` gets the rows of every table, and no more.
    Returns the versions this call applied.
    """
    lock_key = f"billing:migrate:{schema}"
    await conn.execute("SELECT pg_advisory_lock(hashtextextended($1, 0))", lock_key)
    try:
        await conn.execute(f"SET search_path TO {quote_ident(schema)}")
        if lock_timeout is not None:
            milliseconds = int(lock_timeout.total_seconds() * 1000)
            await conn.execute("SELECT set_config('lock_timeout', $1, false)", f"{milliseconds}ms")
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
        for migration in _missing(schema, migrations, applied):
            async with conn.transaction():
                await conn.execute(migration.sql)
                await conn.execute(
                    "INSERT INTO schema_migrations (version, checksum) VALUES ($1, $2)",
                    migration.version,
                    migration.checksum,
                )
            log.info("applied migration", extra={"schema": schema, "version": migration.version})
            done.append(migration.version)
        if runtime_role:
            await _grant_rows(conn, schema, runtime_role)
        return done
    finally:
        await conn.execute("SET lock_timeout TO DEFAULT")
        await conn.execute("SELECT pg_advisory_unlock(hashtextextended($1, 0))", lock_key)


def _missing(schema: str, migrations: Sequence[Migration], applied: dict[str, str]) -> list[Migration]:
    missing = []
    for migration in migrations:
        recorded = applied.get(migration.version)
        if recorded is None:
            missing.append(migration)
        elif recorded != migration.checksum:
            raise MigrationError(
                f"migration {migration.version} in schema {schema} was edited after it was applied"
            )
    return missing


async def _grant_rows(conn: asyncpg.Connection, schema: str, role: str) -> None:
    """Rows of every table and the sequences behind them; no CREATE, and the history read-only."""
    on_schema, to_role = quote_ident(schema), quote_ident(role)
    async with conn.transaction():
        await conn.execute(f"GRANT USAGE ON SCHEMA {on_schema} TO {to_role}")
        await conn.execute(
            f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {on_schema} TO {to_role}"
        )
        await conn.execute(f"GRANT USAGE, SELECT, UPDATE ON ALL SEQUENCES IN SCHEMA {on_schema} TO {to_role}")
        await conn.execute(f"REVOKE INSERT, UPDATE, DELETE ON {on_schema}.schema_migrations FROM {to_role}")


async def check_migrated(conn: asyncpg.Connection, schema: str, migrations: Sequence[Migration]) -> None:
    """Raise `SchemaBehind` while a migration this code knows is not applied yet (a pod that
    does not migrate waits for the migration job); `MigrationError` if one was edited."""
    try:
        rows = await conn.fetch(f"SELECT version, checksum FROM {quote_ident(schema)}.schema_migrations")
    except (
        asyncpg.UndefinedTableError,
        asyncpg.InvalidSchemaNameError,
        asyncpg.InsufficientPrivilegeError,
    ) as error:
        raise SchemaBehind(f"schema {schema} is not migrated yet: {error}") from None
    missing = _missing(schema, migrations, {r["version"]: r["checksum"] for r in rows})
    if missing:
        raise SchemaBehind(f"schema {schema} lacks {', '.join(m.version for m in missing)}")


class FencingTokens:
    """Hands out the fencing tokens of a service's locks, one growing series per resource.

    Issued by PostgreSQL (the store the protected writes go to), so no loss of Redis can hand a
    new holder a token below one already issued or written: that would make the holder's writes
    stale, and the holder retry until the series caught up.
    """

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def next(self, resource: str) -> int:
        token = await self._pool.fetchval(
            """INSERT INTO fencing_tokens (resource, token, issued) VALUES ($1, 0, 1)
               ON CONFLICT (resource) DO UPDATE
                   SET issued = greatest(fencing_tokens.issued, fencing_tokens.token) + 1
               RETURNING issued""",
            resource,
        )
        return int(token)

    async def next_many(self, resources: Sequence[str]) -> dict[str, int]:
        # Rows are locked in name order, so two callers that share resources never deadlock.
        rows = await self._pool.fetch(
            """INSERT INTO fencing_tokens (resource, token, issued)
                   SELECT resource, 0, 1 FROM unnest($1::text[]) AS resource ORDER BY resource
               ON CONFLICT (resource) DO UPDATE
                   SET issued = greatest(fencing_tokens.issued, fencing_tokens.token) + 1
               RETURNING resource, issued""",
            sorted(set(resources)),
        )
        return {row["resource"]: int(row["issued"]) for row in rows}


async def check_fence(conn: asyncpg.Connection, lease: Lease) -> None:
    """Record the lease's fencing token for its lock, or refuse if a newer holder has already written.

    Call it inside the transaction of the protected write: the row lock it takes serialises
    writers, and a stale holder's whole transaction rolls back.
    """
    resource, token = lease.name, lease.fencing_token
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


async def stale_fences(conn: asyncpg.Connection, leases: Sequence[Lease]) -> list[Lease]:
    """`check_fence` for the leases of a batch in one statement: records the fencing token of each
    lease still current and returns, instead of raising, those a newer holder has already written
    under, so the caller leaves their items out of its write."""
    ordered = sorted(leases, key=lambda lease: lease.name)  # row locks in one order: no deadlock
    rows = await conn.fetch(
        """INSERT INTO fencing_tokens (resource, token)
               SELECT resource, token FROM unnest($1::text[], $2::bigint[]) AS t(resource, token)
               ORDER BY resource
           ON CONFLICT (resource) DO UPDATE SET token = EXCLUDED.token
           WHERE fencing_tokens.token <= EXCLUDED.token
           RETURNING resource""",
        [lease.name for lease in ordered],
        [lease.fencing_token for lease in ordered],
    )
    accepted = {row["resource"] for row in rows}
    return [lease for lease in ordered if lease.name not in accepted]
