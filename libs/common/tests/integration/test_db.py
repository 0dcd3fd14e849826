import asyncio
from pathlib import Path

import asyncpg
import pytest

from billing_common import db
from billing_common.testing.plugin import InfraEnv

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
