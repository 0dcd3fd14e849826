"""The outbox and inbox partitioned by time, against real PostgreSQL, driven by a test clock."""

import asyncio
import json
import uuid
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from billing.events.v1 import payment_pb2
from billing_common import db, partitions
from billing_common.clock import ControllableClock
from billing_common.events import Outbox
from billing_common.partitions import Step, TimePartitioned, event_tables
from billing_devtools.testing.plugin import InfraEnv

TABLES = event_tables(outbox_retention=timedelta(days=3), inbox_retention=timedelta(days=5))
START = datetime(2027, 1, 30, 12, tzinfo=UTC)


async def _schema(env: InfraEnv, migrations: list[db.Migration]) -> tuple[str, asyncpg.Connection]:
    schema = f"parts_{env.run_id}"
    env.schemas.append(schema)
    await db.provision(env.infra.postgres_admin_url, schema, schema)
    conn = await asyncpg.connect(db.dsn_with_user(env.infra.postgres_admin_url, schema))
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")
    await db.migrate(conn, schema, migrations)
    return schema, conn


async def _placed(conn: asyncpg.Connection, table: str, column: str) -> dict[str, str]:
    """Each row's time (ISO date) and the partition it is stored in."""
    rows = await conn.fetch(f"SELECT {column} AS at, tableoid::regclass::text AS part FROM {table}")
    return {r["at"].astimezone(UTC).date().isoformat(): r["part"] for r in rows}


async def _partitions(conn: asyncpg.Connection, table: str) -> list[str]:
    rows = await conn.fetch(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = $1::regclass ORDER BY 1",
        table,
    )
    return [r["relname"] for r in rows]


async def _handled(conn: asyncpg.Connection, occurred_at: datetime) -> None:
    await conn.execute(
        "INSERT INTO inbox (event_id, event_type, occurred_at) VALUES ($1, 'payment.succeeded', $2)",
        uuid.uuid4(),
        occurred_at,
    )


async def test_partitions_roll_over_with_the_test_clock(env: InfraEnv) -> None:
    schema, conn = await _schema(env, db.common_migrations())
    clock = ControllableClock(START)
    outbox = Outbox("gateway-adapter", clock)
    try:
        first = await partitions.maintain(conn, schema, TABLES, clock.now())
        assert first.created == [
            *(f"outbox_p202701{day}" for day in ("30", "31")),
            *(f"outbox_p202702{day:02}" for day in range(1, 7)),
            *(f"inbox_p202701{day}" for day in ("30", "31")),
            *(f"inbox_p202702{day:02}" for day in range(1, 7)),
        ]
        for _ in range(10):  # ten days, a row a day in each table, maintained daily
            await outbox.add(conn, payment_pb2.PaymentSucceeded())
            await _handled(conn, clock.now())
            clock.advance(timedelta(days=1))
            await partitions.maintain(conn, schema, TABLES, clock.now())

        assert clock.now() == datetime(2027, 2, 9, 12, tzinfo=UTC)
        # Every row sits in its own day's partition, none in the default one.
        placed = await _placed(conn, "outbox", "created_at")
        assert all(part == f"outbox_p{day.replace('-', '')}" for day, part in placed.items())
        # Relayed rows are kept 3 days past the start of their day (the unrelayed all stay):
        # nothing is dropped yet, as no row was relayed.
        assert len(placed) == 10
        await conn.execute("UPDATE outbox SET published_at = now()")
        await partitions.maintain(conn, schema, TABLES, clock.now())
        assert sorted(await _placed(conn, "outbox", "created_at")) == [
            "2027-02-06",
            "2027-02-07",
            "2027-02-08",
        ]
        # Inbox rows are kept 5 days: the 4th at noon is within them, the 3rd's partition dropped.
        inbox_days = sorted(await _placed(conn, "inbox", "occurred_at"))
        assert inbox_days == [f"2027-02-{day:02}" for day in range(4, 9)]
        inbox_parts = await _partitions(conn, "inbox")
        assert inbox_parts[0] == "inbox_default"
        assert inbox_parts[1:] == [f"inbox_p202702{day:02}" for day in range(4, 17)]
    finally:
        await conn.close()


async def test_an_outbox_row_not_yet_relayed_outlives_its_retention(env: InfraEnv) -> None:
    schema, conn = await _schema(env, db.common_migrations())
    clock = ControllableClock(START)
    try:
        await partitions.maintain(conn, schema, TABLES, clock.now())
        await Outbox("tier", clock).add(conn, payment_pb2.PaymentSucceeded())
        clock.advance(timedelta(days=30))
        done = await partitions.maintain(conn, schema, TABLES, clock.now())
        assert "outbox_p20270130" not in done.dropped
        assert await conn.fetchval("SELECT count(*) FROM outbox WHERE published_at IS NULL") == 1
        await conn.execute("UPDATE outbox SET published_at = now()")
        done = await partitions.maintain(conn, schema, TABLES, clock.now())
        assert "outbox_p20270130" in done.dropped
        assert await conn.fetchval("SELECT count(*) FROM outbox") == 0
    finally:
        await conn.close()


async def test_an_insert_without_its_partition_lands_in_the_default_and_moves_when_it_is_made(
    env: InfraEnv,
) -> None:
    schema, conn = await _schema(env, db.common_migrations())
    try:
        await partitions.maintain(conn, schema, TABLES, START)
        far = START + timedelta(days=40)  # a clock far ahead of the maintenance
        await _handled(conn, far)
        assert await _placed(conn, "inbox", "occurred_at") == {"2027-03-11": "inbox_default"}
        await partitions.maintain(conn, schema, TABLES, START)
        assert await _placed(conn, "inbox", "occurred_at") == {"2027-03-11": "inbox_p20270311"}
    finally:
        await conn.close()


async def test_the_migration_keeps_the_rows_of_the_unpartitioned_tables(env: InfraEnv) -> None:
    common = db.common_migrations()
    assert [m.version for m in common][:3] == [
        "common/0001_common.sql",
        "common/0002_fencing_tokens_issued.sql",
        "common/0003_partitioned_outbox_inbox.sql",
    ]
    schema, conn = await _schema(env, common[:2])
    try:
        handled_at = datetime.now(UTC) - timedelta(days=2)
        event_id = uuid.uuid4()
        await conn.execute(
            "INSERT INTO inbox (event_id, event_type, handled_at) VALUES ($1, 'payment.succeeded', $2)",
            event_id,
            handled_at,
        )
        await conn.execute(
            "INSERT INTO outbox (event_id, event_type, payload) VALUES ($1, 'payment.succeeded', '')",
            uuid.uuid4(),
        )
        await db.migrate(conn, schema, common)
        now = datetime.now(UTC)
        await partitions.maintain(conn, schema, event_tables(timedelta(days=7), timedelta(days=30)), now)

        inbox = await conn.fetchrow(
            "SELECT event_id, occurred_at, tableoid::regclass::text AS part FROM inbox"
        )
        assert inbox["event_id"] == event_id and inbox["occurred_at"] == handled_at
        assert inbox["part"] == f"inbox_p{handled_at:%Y%m%d}"
        outbox = await conn.fetchrow("SELECT id, published_at FROM outbox")
        assert outbox["id"] == 1 and outbox["published_at"] is None
        await Outbox("tier", ControllableClock(START)).add(conn, payment_pb2.PaymentSucceeded())
        assert await conn.fetchval("SELECT max(id) FROM outbox") == 2  # the same id series goes on
    finally:
        await conn.close()


async def test_the_runtime_role_without_ddl_writes_into_partitions_made_after_its_grants(
    env: InfraEnv,
) -> None:
    schema = f"parts_{env.run_id}"
    owner, runtime = f"{schema}_owner", schema
    env.schemas.append(schema)
    await db.provision(env.infra.postgres_admin_url, schema, owner, runtime_role=runtime)
    conn = await asyncpg.connect(db.dsn_with_user(env.infra.postgres_admin_url, owner))
    try:
        await db.migrate(conn, schema, db.common_migrations(), runtime_role=runtime)
        await partitions.maintain(conn, schema, TABLES, START)
    finally:
        await conn.close()
    pool = await env.pool(schema)
    try:
        async with pool.acquire() as rows_only:
            await _handled(rows_only, START)
            assert await _placed(rows_only, "inbox", "occurred_at") == {"2027-01-30": "inbox_p20270130"}
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await partitions.maintain(rows_only, schema, TABLES, START + timedelta(days=30))
    finally:
        await pool.close()
        admin = await asyncpg.connect(env.infra.postgres_admin_url)
        try:
            await admin.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
            await admin.execute(f'DROP ROLE IF EXISTS "{owner}"')
        finally:
            await admin.close()


async def test_pods_maintaining_at_once_make_each_partition_once(env: InfraEnv) -> None:
    schema, conn = await _schema(env, db.common_migrations())
    others = [await asyncpg.connect(db.dsn_with_user(env.infra.postgres_admin_url, schema)) for _ in range(3)]
    try:
        done = await asyncio.gather(*(partitions.maintain(c, schema, TABLES, START) for c in [conn, *others]))
        made = sorted(name for d in done for name in d.created)
        assert made == sorted({*made}) and len(made) == 16
    finally:
        for c in [conn, *others]:
            await c.close()


def test_a_retention_shorter_than_a_partition_is_refused() -> None:
    with pytest.raises(ValueError, match="shorter than one of its partitions"):
        TimePartitioned("usage_records", "occurred_at", Step.MONTH, timedelta(days=20))
