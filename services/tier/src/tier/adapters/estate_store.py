"""The hierarchy and signals in PostgreSQL. Batches go through COPY into a staging table and one
INSERT .. ON CONFLICT, which touches only rows that really change (idempotent upserts)."""

from __future__ import annotations

import json
from collections.abc import Collection, Sequence
from typing import Any

import asyncpg

from billing_common.db import connection, transaction
from tier.adapters import revisions
from tier.adapters.codec import STORED_TIERS
from tier.app.ports import EstateDelta, UpsertCounts
from tier.domain.accounts import (
    AccountKind,
    Database,
    Distributor,
    EndUser,
    InventoryMode,
    Signal,
    SignalKind,
)
from tier.domain.estate import TierRecord
from tier.domain.rules import TierDecision

_TABLES: dict[str, tuple[str, tuple[str, ...]]] = {
    # table: (key column, other columns)
    "distributors": ("distributor_id", ("name", "direct", "active")),
    "end_users": ("end_user_id", ("distributor_id", "name", "active")),
    "databases": (
        "database_id",
        (
            "end_user_id",
            "company_name",
            "schema_name",
            "inventory_mode",
            "sso_access",
            "rest_api_access",
            "active",
        ),
    ),
}


async def _upsert(
    pool: asyncpg.Pool, table: str, records: Sequence[tuple[Any, ...]]
) -> tuple[UpsertCounts, int]:
    key, others = _TABLES[table]
    columns = (key, *others)
    listed = ", ".join(columns)
    stage = f"stage_{table}"
    async with transaction(pool) as conn:
        revision = await revisions.stamp(conn)
        await conn.execute(
            f"CREATE TEMP TABLE {stage} ON COMMIT DROP AS SELECT {listed} FROM {table} WITH NO DATA"
        )
        await conn.copy_records_to_table(stage, records=records, columns=columns)
        rows = await conn.fetch(
            f"""INSERT INTO {table} ({listed}, revision) SELECT {listed}, $1 FROM {stage}
                ON CONFLICT ({key}) DO UPDATE SET
                    {", ".join(f"{c} = EXCLUDED.{c}" for c in others)}, revision = EXCLUDED.revision
                WHERE ({", ".join(f"{table}.{c}" for c in others)})
                      IS DISTINCT FROM ({", ".join(f"EXCLUDED.{c}" for c in others)})
                RETURNING (xmax = 0) AS inserted""",
            revision,
        )
    inserted = sum(1 for row in rows if row["inserted"])
    return UpsertCounts(inserted, len(rows) - inserted, len(records) - len(rows)), revision


def _evidence_json(evidence: Sequence[tuple[str, str]]) -> str:
    return json.dumps([list(pair) for pair in evidence])


class PostgresEstate:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def upsert_distributors(self, rows: Sequence[Distributor]) -> tuple[UpsertCounts, int]:
        return await _upsert(
            self._pool, "distributors", [(r.distributor_id, r.name, r.direct, r.active) for r in rows]
        )

    async def upsert_end_users(self, rows: Sequence[EndUser]) -> tuple[UpsertCounts, int]:
        return await _upsert(
            self._pool, "end_users", [(r.end_user_id, r.distributor_id, r.name, r.active) for r in rows]
        )

    async def upsert_databases(self, rows: Sequence[Database]) -> tuple[UpsertCounts, int]:
        return await _upsert(
            self._pool,
            "databases",
            [
                (
                    r.database_id,
                    r.end_user_id,
                    r.company_name,
                    r.schema_name,
                    r.inventory_mode.value,
                    r.sso_access,
                    r.rest_api_access,
                    r.active,
                )
                for r in rows
            ],
        )

    async def save_signals(self, signals: Sequence[Signal]) -> tuple[list[bool], int]:
        async with transaction(self._pool) as conn:
            revision = await revisions.stamp(conn)
            rows = await conn.fetch(
                """INSERT INTO signals (account_id, kind, value, source, observed_at, revision)
                   SELECT *, $6 FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::timestamptz[])
                   ON CONFLICT (account_id, kind) DO UPDATE SET
                       value = EXCLUDED.value, source = EXCLUDED.source,
                       observed_at = EXCLUDED.observed_at, revision = EXCLUDED.revision
                   WHERE signals.observed_at <= EXCLUDED.observed_at
                   RETURNING account_id, kind""",
                [s.account_id for s in signals],
                [s.kind.value for s in signals],
                [s.value for s in signals],
                [s.source for s in signals],
                [s.observed_at for s in signals],
                revision,
            )
        stored = {(row["account_id"], row["kind"]) for row in rows}
        return [(s.account_id, s.kind.value) in stored for s in signals], revision

    async def existing(self, account_ids: Sequence[str]) -> dict[str, str]:
        async with connection(self._pool) as conn:
            rows = await conn.fetch(
                """SELECT distributor_id AS id, 'distributor' AS kind FROM distributors
                       WHERE distributor_id = ANY($1::text[])
                   UNION ALL SELECT end_user_id, 'end_user' FROM end_users WHERE end_user_id = ANY($1::text[])
                   UNION ALL SELECT database_id, 'database' FROM databases
                       WHERE database_id = ANY($1::text[])""",
                list(account_ids),
            )
        return {row["id"]: row["kind"] for row in rows}

    async def load(self, since_revision: int, skip: Collection[int] = ()) -> EstateDelta:
        horizon = await revisions.committed_horizon(self._pool)
        delta = EstateDelta(horizon)
        if horizon <= since_revision:
            return delta
        window = "revision > $1 AND revision <= $2 AND NOT (revision = ANY($3::bigint[]))"
        args = (since_revision, horizon, list(skip))
        async with connection(self._pool) as conn:
            delta.distributors = [
                Distributor(r[0], r[1], r[2], r[3])
                for r in await conn.fetch(
                    f"SELECT distributor_id, name, direct, active FROM distributors WHERE {window}", *args
                )
            ]
            delta.end_users = [
                EndUser(r[0], r[1], r[2], r[3])
                for r in await conn.fetch(
                    f"SELECT end_user_id, distributor_id, name, active FROM end_users WHERE {window}", *args
                )
            ]
            modes = {mode.value: mode for mode in InventoryMode}
            delta.databases = [
                Database(r[0], r[1], r[2], r[3], modes[r[4]], r[5], r[6], r[7])
                for r in await conn.fetch(
                    f"""SELECT database_id, end_user_id, company_name, schema_name, inventory_mode,
                               sso_access, rest_api_access, active FROM databases WHERE {window}""",
                    *args,
                )
            ]
            delta.signals = [
                Signal(r[0], SignalKind(r[1]), r[2], r[3], r[4])
                for r in await conn.fetch(
                    f"SELECT account_id, kind, value, source, observed_at FROM signals WHERE {window}", *args
                )
            ]
            decisions: dict[tuple[int, str, str, str], TierDecision] = {}
            tiers: list[tuple[str, TierRecord]] = []
            for r in await conn.fetch(
                f"""SELECT account_id, kind, tier, rule_id, rule_set_version, evidence::text, since, change_id
                    FROM account_tiers WHERE {window}""",
                *args,
            ):
                key = (r[2], r[3], r[4], r[5])
                decision = decisions.get(key)
                if decision is None:
                    evidence = tuple((name, value) for name, value in json.loads(r[5]))
                    decision = decisions[key] = TierDecision(STORED_TIERS[r[2]], r[3], r[4], evidence)
                tiers.append((r[0], TierRecord(AccountKind(r[1]), decision, r[6], r[7])))
            delta.tiers = tiers
        return delta
