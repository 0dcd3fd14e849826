"""The plan catalog in PostgreSQL; the plan events the domain decides go to the outbox in the same
transaction."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

import asyncpg

from billing_common.db import connection, transaction
from billing_common.errors import AlreadyExists, FailedPrecondition, NotFound
from billing_common.events import Outbox
from billing_common.idempotency import IdempotencyKey, claim, complete
from billing_common.money import Money
from billing_common.subscriptions import Frequency
from quota.adapters.codec import entitlements_from_json, entitlements_to_json, plan_event_message
from quota.domain.catalog import AddOn, Plan, PlanSpec, plan_created, plan_retired, plan_updated

_PLAN_COLUMNS = """p.code, p.version, p.name, p.price_minor, p.currency, p.frequency, p.trial_days,
    p.entitlements, p.threshold_percents, p.is_free_fallback, p.created_at, h.retired"""


def _plan(row: asyncpg.Record) -> Plan:
    spec = PlanSpec(
        name=row["name"],
        price=Money(row["price_minor"], row["currency"]),
        frequency=Frequency(row["frequency"]),
        trial_days=row["trial_days"],
        entitlements=entitlements_from_json(row["entitlements"]),
        threshold_percents=tuple(row["threshold_percents"]),
        is_free_fallback=row["is_free_fallback"],
    )
    return Plan(row["code"], row["version"], spec, row["created_at"], row["retired"])


def _add_on(row: asyncpg.Record) -> AddOn:
    return AddOn(
        row["code"],
        row["name"],
        Money(row["price_minor"], row["currency"]),
        entitlements_from_json(row["entitlements"]),
    )


class PostgresCatalog:
    def __init__(self, pool: asyncpg.Pool, outbox: Outbox) -> None:
        self._pool = pool
        self._outbox = outbox

    async def _fetch_plan(self, conn: asyncpg.Connection, code: str, version: int = 0) -> Plan | None:
        row = await conn.fetchrow(
            f"""SELECT {_PLAN_COLUMNS} FROM plans p JOIN plan_heads h ON h.code = p.code
                WHERE p.code = $1 AND p.version = CASE WHEN $2 = 0 THEN h.current_version ELSE $2 END""",
            code,
            version,
        )
        return None if row is None else _plan(row)

    async def _insert_version(
        self, conn: asyncpg.Connection, code: str, version: int, spec: PlanSpec, now: datetime
    ) -> None:
        if spec.is_free_fallback:
            other = await conn.fetchval(
                """SELECT h.code FROM plan_heads h
                   JOIN plans p ON p.code = h.code AND p.version = h.current_version
                   WHERE p.is_free_fallback AND NOT h.retired AND h.code <> $1""",
                code,
            )
            if other:
                raise FailedPrecondition(f"plan {other} is already the free fallback plan")
        await conn.execute(
            """INSERT INTO plans (code, version, name, price_minor, currency, frequency, trial_days,
                                  entitlements, threshold_percents, is_free_fallback, created_at)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)""",
            code,
            version,
            spec.name,
            spec.price.amount_minor,
            spec.price.currency,
            spec.frequency,
            spec.trial_days,
            entitlements_to_json(spec.entitlements),
            list(spec.threshold_percents),
            spec.is_free_fallback,
            now,
        )

    async def create_plan(self, code: str, spec: PlanSpec, now: datetime, idem: IdempotencyKey) -> Plan:
        async with transaction(self._pool) as conn:
            prior = await claim(conn, idem)
            if prior is not None:
                return await self._plan_ref(conn, prior)
            # Serialise concurrent creations of the free fallback plan.
            await conn.execute("LOCK TABLE plan_heads IN SHARE ROW EXCLUSIVE MODE")
            inserted = await conn.fetchval(
                "INSERT INTO plan_heads (code, current_version, created_at) VALUES ($1, 1, $2) "
                "ON CONFLICT DO NOTHING RETURNING true",
                code,
                now,
            )
            if not inserted:
                raise AlreadyExists(f"plan {code} already exists; UpdatePlan makes a new version")
            created = plan_created(code)
            await self._insert_version(conn, code, created.version, spec, now)
            await self._outbox.add(conn, plan_event_message(created))
            await complete(conn, idem, f"{code}@{created.version}")
            plan = await self._fetch_plan(conn, code, created.version)
        assert plan is not None
        return plan

    async def _plan_ref(self, conn: asyncpg.Connection, ref: str) -> Plan:
        code, _, version = ref.partition("@")
        plan = await self._fetch_plan(conn, code, int(version))
        assert plan is not None
        return plan

    async def update_plan(self, code: str, spec: PlanSpec, now: datetime, idem: IdempotencyKey) -> Plan:
        async with transaction(self._pool) as conn:
            prior = await claim(conn, idem)
            if prior is not None:
                return await self._plan_ref(conn, prior)
            await conn.execute("LOCK TABLE plan_heads IN SHARE ROW EXCLUSIVE MODE")
            current = await self._fetch_plan(conn, code)
            if current is None:
                raise NotFound(f"plan {code} does not exist")
            updated = plan_updated(current)
            await self._insert_version(conn, code, updated.version, spec, now)
            await conn.execute(
                "UPDATE plan_heads SET current_version = $2 WHERE code = $1", code, updated.version
            )
            await self._outbox.add(conn, plan_event_message(updated))
            await complete(conn, idem, f"{code}@{updated.version}")
            plan = await self._fetch_plan(conn, code, updated.version)
        assert plan is not None
        return plan

    async def get_plan(self, code: str, version: int = 0) -> Plan | None:
        async with connection(self._pool) as conn:
            return await self._fetch_plan(conn, code, version)

    async def list_plans(self, after_code: str, limit: int, include_retired: bool) -> list[Plan]:
        rows = await self._pool.fetch(
            f"""SELECT {_PLAN_COLUMNS} FROM plans p JOIN plan_heads h
                  ON h.code = p.code AND h.current_version = p.version
                WHERE h.code > $1 AND ($2 OR NOT h.retired) ORDER BY h.code LIMIT $3""",
            after_code,
            include_retired,
            limit,
        )
        return [_plan(r) for r in rows]

    async def retire_plan(self, code: str) -> Plan:
        async with transaction(self._pool) as conn:
            changed = await conn.fetchval(
                "UPDATE plan_heads SET retired = true WHERE code = $1 AND NOT retired RETURNING true", code
            )
            plan = await self._fetch_plan(conn, code)
            if plan is None:
                raise NotFound(f"plan {code} does not exist")
            for event in plan_retired(code, already_retired=not changed):
                await self._outbox.add(conn, plan_event_message(event))
        return plan

    async def free_plan(self) -> Plan | None:
        row = await self._pool.fetchrow(
            f"""SELECT {_PLAN_COLUMNS} FROM plans p JOIN plan_heads h
                  ON h.code = p.code AND h.current_version = p.version
                WHERE p.is_free_fallback AND NOT h.retired ORDER BY h.code LIMIT 1"""
        )
        return None if row is None else _plan(row)

    async def create_add_on(self, add_on: AddOn, now: datetime, idem: IdempotencyKey) -> AddOn:
        async with transaction(self._pool) as conn:
            prior = await claim(conn, idem)
            if prior is None:
                inserted = await conn.fetchval(
                    """INSERT INTO add_ons (code, name, price_minor, currency, entitlements, created_at)
                       VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING RETURNING true""",
                    add_on.code,
                    add_on.name,
                    add_on.price.amount_minor,
                    add_on.price.currency,
                    entitlements_to_json(add_on.entitlements),
                    now,
                )
                if not inserted:
                    raise AlreadyExists(f"add-on {add_on.code} already exists")
                await complete(conn, idem, add_on.code)
                prior = add_on.code
            row = await conn.fetchrow("SELECT * FROM add_ons WHERE code = $1", prior)
        assert row is not None
        return _add_on(row)

    async def list_add_ons(self) -> list[AddOn]:
        return [_add_on(r) for r in await self._pool.fetch("SELECT * FROM add_ons ORDER BY code")]

    async def set_tier_plans(self, mapping: Mapping[str, str]) -> dict[str, str]:
        async with transaction(self._pool) as conn:
            for tier, code in mapping.items():
                await conn.execute(
                    "INSERT INTO tier_plans (tier, plan_code) VALUES ($1, $2) "
                    "ON CONFLICT (tier) DO UPDATE SET plan_code = EXCLUDED.plan_code",
                    tier,
                    code,
                )
        return await self.tier_plans()

    async def tier_plans(self) -> dict[str, str]:
        rows = await self._pool.fetch("SELECT tier, plan_code FROM tier_plans ORDER BY tier")
        return {r["tier"]: r["plan_code"] for r in rows}
