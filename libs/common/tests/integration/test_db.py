import asyncio
from datetime import timedelta
from pathlib import Path

import asyncpg
import pytest

from billing_common import db
from billing_devtools.testing.plugin import InfraEnv

MIGRATIONS = [
    db.Migration(
        "0001_plans.sql", "CREATE TABLE plans (code TEXT PRIMARY KEY, price_minor BIGINT NOT NULL);"
    ),
    db.Migration("0002_seed.sql", "INSERT INTO plans VALUES ('pro', 4900);"),
]


async def _migrate_as(env: InfraEnv, schema: str, migrations: list[db.Migration]) -> list[str]:
    conn = await asyncpg.connect(db.dsn_with_user(env.infra.postgres_admin_url, schema))
    try:
        return await db.migrate(conn, schema, migrations)
    finally:
        await conn.close()


async def test_two_pods_migrating_at_once_apply_each_migration_once(env: InfraEnv) -> None:
    schema = f"quota_{env.run_id}"
    env.schemas.append(schema)
    await asyncio.gather(*(db.provision(env.infra.postgres_admin_url, schema, schema) for _ in range(4)))

    results = await asyncio.gather(*(_migrate_as(env, schema, MIGRATIONS) for _ in range(4)))

    applied_by_someone = sorted(v for result in results for v in result)
    assert applied_by_someone == ["0001_plans.sql", "0002_seed.sql"]
    pool = await env.pool(schema)
    async with pool:
        assert await pool.fetchval("SELECT count(*) FROM plans") == 1
        assert await pool.fetchval("SELECT count(*) FROM schema_migrations") == 2


async def test_an_applied_migration_that_was_edited_is_refused(env: InfraEnv) -> None:
    schema = f"quota_{env.run_id}"
    env.schemas.append(schema)
    await db.provision(env.infra.postgres_admin_url, schema, schema)
    await _migrate_as(env, schema, MIGRATIONS)
    edited = [MIGRATIONS[0], db.Migration("0002_seed.sql", "INSERT INTO plans VALUES ('pro', 9900);")]
    with pytest.raises(db.MigrationError, match=r"0002_seed\.sql"):
        await _migrate_as(env, schema, edited)


async def test_a_service_role_cannot_read_another_services_schema(env: InfraEnv) -> None:
    quota, recurring = f"quota_{env.run_id}", f"recurring_{env.run_id}"
    env.schemas += [quota, recurring]
    for schema in (quota, recurring):
        await db.provision(env.infra.postgres_admin_url, schema, schema)
    await _migrate_as(
        env,
        recurring,
        [db.Migration("0001.sql", "CREATE TABLE invoices (id INT); INSERT INTO invoices VALUES (1);")],
    )

    quota_conn = await asyncpg.connect(db.dsn_with_user(env.infra.postgres_admin_url, quota))
    try:
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await quota_conn.fetch(f"SELECT * FROM {recurring}.invoices")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await quota_conn.execute(f"CREATE TABLE {recurring}.intruder (id INT)")
    finally:
        await quota_conn.close()


def test_service_migration_folders_hold_sql_only() -> None:
    services = Path(__file__).resolve().parents[4] / "services"
    for folder in services.glob("*/migrations"):
        assert all(p.suffix == ".sql" for p in folder.iterdir()), folder


async def _separate_roles(env: InfraEnv) -> tuple[str, str]:
    """A schema owned by a migration role, and the runtime role that works in it."""
    runtime = f"quota_{env.run_id}"
    owner = f"{runtime}_owner"
    env.schemas += [runtime, owner]
    await db.provision(env.infra.postgres_admin_url, runtime, owner, runtime_role=runtime)
    return owner, runtime


async def _migrate_owner(env: InfraEnv, owner: str, schema: str, migrations: list[db.Migration]) -> list[str]:
    conn = await asyncpg.connect(db.dsn_with_user(env.infra.postgres_admin_url, owner))
    try:
        return await db.migrate(conn, schema, migrations, runtime_role=schema)
    finally:
        await conn.close()


async def test_the_runtime_role_reads_and_writes_rows_but_cannot_change_the_schema(env: InfraEnv) -> None:
    owner, schema = await _separate_roles(env)
    await _migrate_owner(env, owner, schema, MIGRATIONS)

    runtime = await asyncpg.connect(db.dsn_with_user(env.infra.postgres_admin_url, schema))
    try:
        # No search_path from the client: the role's own default finds the schema (as behind PgBouncer).
        await runtime.execute("INSERT INTO plans VALUES ('team', 9900)")
        await runtime.execute("UPDATE plans SET price_minor = 5900 WHERE code = 'pro'")
        assert await runtime.fetchval("SELECT sum(price_minor) FROM plans") == 15800
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await runtime.execute("CREATE TABLE intruder (id INT)")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await runtime.execute("ALTER TABLE plans ADD COLUMN discount INT")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await runtime.execute("DELETE FROM schema_migrations")
    finally:
        await runtime.close()


async def test_a_migration_that_waits_for_a_busy_table_gives_up_at_the_lock_timeout(env: InfraEnv) -> None:
    schema = f"quota_{env.run_id}"
    env.schemas.append(schema)
    await db.provision(env.infra.postgres_admin_url, schema, schema)
    await _migrate_as(env, schema, MIGRATIONS[:1])
    reader = await asyncpg.connect(env.infra.postgres_admin_url)
    migrator = await asyncpg.connect(db.dsn_with_user(env.infra.postgres_admin_url, schema))
    try:
        # A long transaction of a running pod holds the table a migration must alter.
        async with reader.transaction():
            await reader.execute(f"LOCK TABLE {schema}.plans IN ACCESS SHARE MODE")
            alter = db.Migration("0002_discount.sql", "ALTER TABLE plans ADD COLUMN discount INT")
            with pytest.raises(asyncpg.LockNotAvailableError):
                await asyncio.wait_for(
                    db.migrate(
                        migrator, schema, [MIGRATIONS[0], alter], lock_timeout=timedelta(milliseconds=200)
                    ),
                    30,
                )
        assert await migrator.fetchval("SELECT count(*) FROM schema_migrations") == 1
        assert await migrator.fetchval("SHOW lock_timeout") == "0"
    finally:
        await reader.close()
        await migrator.close()


async def test_a_schema_its_runtime_role_owned_is_handed_to_the_migration_role(env: InfraEnv) -> None:
    schema = f"quota_{env.run_id}"
    owner = f"{schema}_owner"
    env.schemas += [schema, owner]
    await db.provision(env.infra.postgres_admin_url, schema, schema)
    await _migrate_as(env, schema, MIGRATIONS)

    await db.provision(env.infra.postgres_admin_url, schema, owner, runtime_role=schema)
    await _migrate_owner(env, owner, schema, MIGRATIONS)

    admin = await asyncpg.connect(env.infra.postgres_admin_url)
    try:
        owners = await admin.fetch(
            """SELECT DISTINCT tableowner FROM pg_tables WHERE schemaname = $1
               UNION SELECT nspowner::regrole::text FROM pg_namespace WHERE nspname = $1""",
            schema,
        )
    finally:
        await admin.close()
    assert [r[0] for r in owners] == [owner]
    runtime = await asyncpg.connect(db.dsn_with_user(env.infra.postgres_admin_url, schema))
    try:
        assert await runtime.fetchval("SELECT price_minor FROM plans WHERE code = 'pro'") == 4900
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await runtime.execute("DROP TABLE plans")
    finally:
        await runtime.close()


async def test_a_schema_without_every_migration_is_reported_behind_until_they_are_applied(
    env: InfraEnv,
) -> None:
    owner, schema = await _separate_roles(env)
    runtime = await asyncpg.connect(db.dsn_with_user(env.infra.postgres_admin_url, schema))
    try:
        with pytest.raises(db.SchemaBehind):
            await db.check_migrated(runtime, schema, MIGRATIONS)
        await _migrate_owner(env, owner, schema, MIGRATIONS[:1])
        with pytest.raises(db.SchemaBehind, match=r"0002_seed\.sql"):
            await db.check_migrated(runtime, schema, MIGRATIONS)
        await _migrate_owner(env, owner, schema, MIGRATIONS)
        await db.check_migrated(runtime, schema, MIGRATIONS)
    finally:
        await runtime.close()
