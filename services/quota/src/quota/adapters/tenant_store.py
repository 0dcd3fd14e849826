"""Per-tenant state in PostgreSQL: the subscription projection, add-ons, overrides, grants."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import asyncpg

from billing_common.db import connection, transaction
from billing_common.idempotency import IdempotencyKey, claim, complete
from quota.adapters.catalog_store import _add_on
from quota.app.ports import Standing, TenantPeriod
from quota.domain.catalog import ActiveAddOn, Behaviour
from quota.domain.resolution import Grant, Override, SubscriptionView, status_named


def _view(row: asyncpg.Record) -> SubscriptionView:
    return SubscriptionView(
        subscription_id=row["subscription_id"],
        tenant_id=row["tenant_id"],
        status=status_named(row["status"]),
        plan_code=row["plan_code"],
        plan_version=row["plan_version"],
        period_start=row["period_start"],
        period_end=row["period_end"],
        previous_period_start=row["previous_period_start"],
        version=row["snapshot_version"],
    )


def _override(row: asyncpg.Record) -> Override:
    return Override(
        row["tenant_id"], row["key"], row["limit"], Behaviour(row["behaviour"]) if row["behaviour"] else None
    )


def _grant(row: asyncpg.Record) -> Grant:
    return Grant(
        row["grant_id"], row["tenant_id"], row["key"], row["quantity"], row["expires_at"], row["created_at"]
    )


class PostgresTenantSession:
    def __init__(self, conn: asyncpg.Connection) -> None:
        self._conn = conn

    async def save_snapshot(self, view: SubscriptionView) -> SubscriptionView | None:
        row = await self._conn.fetchrow(
            "SELECT * FROM subscriptions WHERE subscription_id = $1 FOR UPDATE", view.subscription_id
        )
        applied = view if row is None else _view(row).advanced_by(view)
        if applied is None:
            return None
        await self._conn.execute(
            """INSERT INTO subscriptions (subscription_id, tenant_id, status, plan_code, plan_version,
                   period_start, period_end, previous_period_start, snapshot_version)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
               ON CONFLICT (subscription_id) DO UPDATE SET tenant_id = EXCLUDED.tenant_id,
                   status = EXCLUDED.status, plan_code = EXCLUDED.plan_code,
                   plan_version = EXCLUDED.plan_version, period_start = EXCLUDED.period_start,
                   period_end = EXCLUDED.period_end, previous_period_start = EXCLUDED.previous_period_start,
                   snapshot_version = EXCLUDED.snapshot_version""",
            applied.subscription_id,
            applied.tenant_id,
            applied.status_name,
            applied.plan_code,
            applied.plan_version,
            applied.period_start,
            applied.period_end,
            applied.previous_period_start,
            applied.version,
        )
        return applied


class PostgresTenants:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def standings(self, tenant_ids: Sequence[str], at: datetime) -> dict[str, Standing]:
        standings = {tenant_id: Standing([], [], [], []) for tenant_id in tenant_ids}
        ids = list(standings)
        async with connection(self._pool) as conn:
            for row in await conn.fetch("SELECT * FROM subscriptions WHERE tenant_id = ANY($1::text[])", ids):
                standings[row["tenant_id"]].subscriptions.append(_view(row))
            for row in await conn.fetch(
                """SELECT t.tenant_id, a.* FROM tenant_add_ons t JOIN add_ons a ON a.code = t.add_on_code
                   WHERE t.tenant_id = ANY($1::text[]) AND t.removed_at IS NULL ORDER BY a.code""",
                ids,
            ):
                standings[row["tenant_id"]].add_ons.append(_add_on(row))
            for row in await conn.fetch(
                "SELECT * FROM overrides WHERE tenant_id = ANY($1::text[]) ORDER BY key", ids
            ):
                standings[row["tenant_id"]].overrides.append(_override(row))
            for row in await conn.fetch(
                "SELECT * FROM grants WHERE tenant_id = ANY($1::text[]) AND expires_at > $2",
                ids,
                at,
            ):
                standings[row["tenant_id"]].grants.append(_grant(row))
        return standings

    def within(self, conn: asyncpg.Connection) -> PostgresTenantSession:
        return PostgresTenantSession(conn)

    async def attach_add_on(self, tenant_id: str, code: str, attached: bool, at: datetime) -> None:
        if attached:
            await self._pool.execute(
                """INSERT INTO tenant_add_ons (tenant_id, add_on_code, added_at) VALUES ($1, $2, $3)
                   ON CONFLICT (tenant_id, add_on_code) WHERE removed_at IS NULL DO NOTHING""",
                tenant_id,
                code,
                at,
            )
        else:
            await self._pool.execute(
                """UPDATE tenant_add_ons SET removed_at = greatest($3, added_at)
                   WHERE tenant_id = $1 AND add_on_code = $2 AND removed_at IS NULL""",
                tenant_id,
                code,
                at,
            )

    async def add_ons_held(self, periods: Sequence[TenantPeriod]) -> list[list[ActiveAddOn]]:
        rows = await self._pool.fetch(
            """SELECT p.ord, a.*, greatest(t.added_at, p.start_at) AS active_from,
                      least(coalesce(t.removed_at, p.end_at), p.end_at) AS active_until
               FROM unnest($1::text[], $2::timestamptz[], $3::timestamptz[])
                        WITH ORDINALITY AS p(tenant_id, start_at, end_at, ord)
               JOIN tenant_add_ons t ON t.tenant_id = p.tenant_id
                    AND t.added_at < p.end_at AND coalesce(t.removed_at, 'infinity') > p.start_at
                    AND coalesce(t.removed_at, 'infinity') > t.added_at
               JOIN add_ons a ON a.code = t.add_on_code
               ORDER BY p.ord, t.added_at, a.code""",
            [p.tenant_id for p in periods],
            [p.start for p in periods],
            [p.end for p in periods],
        )
        held: list[list[ActiveAddOn]] = [[] for _ in periods]
        for row in rows:
            held[row["ord"] - 1].append(ActiveAddOn(_add_on(row), row["active_from"], row["active_until"]))
        return held

    async def set_override(self, override: Override | None, tenant_id: str, key: str) -> None:
        if override is None:
            await self._pool.execute(
                "DELETE FROM overrides WHERE tenant_id = $1 AND key = $2", tenant_id, key
            )
            return
        await self._pool.execute(
            """INSERT INTO overrides (tenant_id, key, "limit", behaviour) VALUES ($1, $2, $3, $4)
               ON CONFLICT (tenant_id, key) DO UPDATE SET "limit" = EXCLUDED."limit",
                   behaviour = EXCLUDED.behaviour""",
            tenant_id,
            key,
            override.limit,
            override.behaviour.value if override.behaviour else None,
        )

    async def create_grant(self, grant: Grant, idem: IdempotencyKey) -> Grant:
        async with transaction(self._pool) as conn:
            prior = await claim(conn, idem)
            if prior is None:
                await conn.execute(
                    """INSERT INTO grants (grant_id, tenant_id, key, quantity, expires_at, created_at)
                       VALUES ($1, $2, $3, $4, $5, $6)""",
                    grant.grant_id,
                    grant.tenant_id,
                    grant.key,
                    grant.quantity,
                    grant.expires_at,
                    grant.created_at,
                )
                await complete(conn, idem, grant.grant_id)
                prior = grant.grant_id
            row = await conn.fetchrow("SELECT * FROM grants WHERE grant_id = $1", prior)
        assert row is not None
        return _grant(row)
