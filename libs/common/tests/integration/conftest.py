import asyncpg

from billing_common import db
from billing_devtools.testing.plugin import InfraEnv
from billing_devtools.testing.private_servers import (  # noqa: F401 - fixtures
    private_postgres,
    private_rabbitmq,
    private_redis,
)


async def service_schema(env: InfraEnv, name: str, tables: str) -> str:
    """A schema with the common tables (fencing tokens, idempotent calls...) and `tables`, as a
    service's schema has them."""
    schema = f"{name}_{env.run_id}"
    env.schemas.append(schema)
    await db.provision(env.infra.postgres_admin_url, schema, schema)
    conn = await asyncpg.connect(db.dsn_with_user(env.infra.postgres_admin_url, schema))
    try:
        await db.migrate(conn, schema, [*db.common_migrations(), db.Migration("0001.sql", tables)])
    finally:
        await conn.close()
    return schema
