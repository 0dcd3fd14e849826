"""Current tiers and the append-only history in PostgreSQL; the tier.changed events the domain
decides for the written changes go through the outbox in the same transaction as their history rows."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from functools import lru_cache

import asyncpg

from billing.events.v1 import tier_pb2 as events
from billing_common.db import check_fence, connection, transaction
from billing_common.events import Outbox
from billing_common.locks import Lease
from billing_common.protos import TIERS
from tier.adapters import revisions
from tier.adapters.codec import EVENT_ACCOUNT_KINDS, STORED_TIERS
from tier.app.ports import AppliedChange, HistoryEntry
from tier.domain.estate import PlannedChange
from tier.domain.events import TierChanged, announced

_STAGE_COLUMNS = (
    "change_id",
    "account_id",
    "kind",
    "previous_tier",
    "new_tier",
    "rule_id",
    "rule_set_version",
    "evidence_before",
    "evidence_after",
    "billed_account_id",
)
_HISTORY_COLUMNS = """change_id, account_id, kind, previous_tier, new_tier, rule_id, rule_set_version,
    evidence_before, evidence_after, scan_id, cause, billed_account_id, effective_at"""


@lru_cache(maxsize=65_536)
def _json(evidence: tuple[tuple[str, str], ...]) -> str:
    """Decisions share their evidence tuples, so most rows reuse an encoding already made."""
    return json.dumps([list(pair) for pair in evidence])


def _entry(row: asyncpg.Record) -> HistoryEntry:
    return HistoryEntry(
        change_id=row["change_id"],
        account_id=row["account_id"],
        kind=row["kind"],
        previous_tier=None if row["previous_tier"] is None else STORED_TIERS[row["previous_tier"]],
        new_tier=STORED_TIERS[row["new_tier"]],
        rule_id=row["rule_id"],
        rule_set_version=row["rule_set_version"],
        evidence_before=tuple((n, v) for n, v in row["evidence_before"]),
        evidence_after=tuple((n, v) for n, v in row["evidence_after"]),
        scan_id=str(row["scan_id"] or ""),
        cause=row["cause"],
        billed_account_id=row["billed_account_id"],
        effective_at=row["effective_at"],
    )


def _message(event: TierChanged) -> events.TierChanged:
    message = events.TierChanged(
        account_id=event.account_id,
        account_kind=EVENT_ACCOUNT_KINDS.pb(event.kind),
        previous_tier=TIERS.pb(event.previous_tier),
        new_tier=TIERS.pb(event.new_tier),
        rule_id=event.rule_id,
        rule_set_version=event.rule_set_version,
        evidence_before=[events.SignalValue(name=n, value=v) for n, v in event.evidence_before],
        evidence_after=[events.SignalValue(name=n, value=v) for n, v in event.evidence_after],
        scan_id=event.scan_id,
        billed_account_id=event.billed_account_id,
    )
    message.effective_at.FromDatetime(event.effective_at)
    return message


class PostgresTiers:
    def __init__(self, pool: asyncpg.Pool, outbox: Outbox) -> None:
        self._pool = pool
        self._outbox = outbox

    async def apply_changes(
        self,
        changes: Sequence[PlannedChange],
        *,
        scan_id: str,
        effective_at: datetime,
        lease: Lease,
    ) -> tuple[list[AppliedChange], int]:
        async with transaction(self._pool) as conn:
            await check_fence(conn, lease)
            revision = await revisions.stamp(conn)
            change_ids = [
                r[0]
                for r in await conn.fetch(
                    "SELECT nextval('tier_history_change_id_seq') FROM generate_series(1, $1)", len(changes)
                )
            ]
            await conn.execute(
                """CREATE TEMP TABLE tier_stage (
                       change_id BIGINT, account_id TEXT, kind TEXT,
                       previous_tier SMALLINT, new_tier SMALLINT,
                       rule_id TEXT, rule_set_version TEXT, evidence_before TEXT, evidence_after TEXT,
                       billed_account_id TEXT) ON COMMIT DROP"""
            )
            await conn.copy_records_to_table(
                "tier_stage",
                columns=_STAGE_COLUMNS,
                records=[
                    (
                        change_id,
                        c.account_id,
                        c.kind.value,
                        None if c.previous is None else c.previous.decision.tier.rank,
                        c.decision.tier.rank,
                        c.decision.rule_id,
                        c.decision.rule_set_version,
                        _json(c.previous.decision.evidence if c.previous else ()),
                        _json(c.decision.evidence),
                        c.billed_account_id,
                    )
                    for change_id, c in zip(change_ids, changes, strict=True)
                ],
            )
            # Compare-and-set: a change applies only if the account still has the tier it was
            # planned from (a concurrent scan of another kind may have moved it already).
            rows = await conn.fetch(
                f"""WITH moved AS (
                       UPDATE account_tiers t SET tier = s.new_tier, rule_id = s.rule_id,
                              rule_set_version = s.rule_set_version, evidence = s.evidence_after::jsonb,
                              since = $1, change_id = s.change_id, revision = $2
                       FROM tier_stage s
                       WHERE s.previous_tier IS NOT NULL AND t.account_id = s.account_id
                             AND t.tier = s.previous_tier
                       RETURNING s.change_id),
                   started AS (
                       INSERT INTO account_tiers (account_id, kind, tier, rule_id, rule_set_version, evidence,
                                                  since, change_id, revision)
                       SELECT account_id, kind, new_tier, rule_id, rule_set_version, evidence_after::jsonb,
                              $1, change_id, $2
                       FROM tier_stage WHERE previous_tier IS NULL
                       ON CONFLICT (account_id) DO NOTHING
                       RETURNING change_id)
                   INSERT INTO tier_history ({_HISTORY_COLUMNS})
                   SELECT change_id, account_id, kind, previous_tier, new_tier, rule_id, rule_set_version,
                          evidence_before::jsonb, evidence_after::jsonb, $3::uuid, '', billed_account_id, $1
                   FROM tier_stage
                   WHERE change_id IN (SELECT change_id FROM moved UNION ALL SELECT change_id FROM started)
                   RETURNING change_id""",
                effective_at,
                revision,
                scan_id,
            )
            written = {row[0] for row in rows}
            applied = [
                AppliedChange(change_id, change)
                for change_id, change in zip(change_ids, changes, strict=True)
                if change_id in written
            ]
            for event in announced([change.planned for change in applied], scan_id, effective_at):
                await self._outbox.add(conn, _message(event))
        return applied, revision

    async def history(self, account_id: str) -> list[HistoryEntry]:
        async with connection(self._pool) as conn:
            rows = await conn.fetch(
                f"""SELECT {_HISTORY_COLUMNS} FROM tier_history WHERE account_id = $1
                    ORDER BY effective_at, change_id""",
                account_id,
            )
        return [_entry(row) for row in rows]

    async def tier_at(self, account_id: str, at: datetime) -> HistoryEntry | None:
        async with connection(self._pool) as conn:
            row = await conn.fetchrow(
                f"""SELECT {_HISTORY_COLUMNS} FROM tier_history WHERE account_id = $1 AND effective_at <= $2
                    ORDER BY effective_at DESC, change_id DESC LIMIT 1""",
                account_id,
                at,
            )
        return None if row is None else _entry(row)

    async def changes(
        self, since: datetime | None, scan_id: str, after_change_id: int, limit: int
    ) -> list[HistoryEntry]:
        async with connection(self._pool) as conn:
            rows = await conn.fetch(
                f"""SELECT {_HISTORY_COLUMNS} FROM tier_history
                    WHERE change_id > $1
                      AND ($2::timestamptz IS NULL OR effective_at >= $2)
                      AND ($3::uuid IS NULL OR scan_id = $3::uuid)
                    ORDER BY change_id LIMIT $4""",
                after_change_id,
                since,
                scan_id or None,
                limit,
            )
        return [_entry(row) for row in rows]
