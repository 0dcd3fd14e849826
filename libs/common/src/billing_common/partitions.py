"""Tables partitioned by time: partitions made ahead and dropped after their retention.

A table named here is `PARTITION BY RANGE (<column>)` with a `<table>_default` partition, so an
insert never fails for want of a partition: a row whose period has none yet (the maintenance did
not run, or a clock far ahead) lands in the default partition, and moves to its own partition
when the maintenance creates it. The maintenance runs with DDL rights, so it is part of
`--migrate-only` (the migration job, and a daily CronJob running the same command):

- it creates the partitions of the current period and of `ahead` periods after it, and of every
  period within the retention that still has rows in the default partition;
- it drops a partition once its whole range lies before the cutoff, the start of the period that
  holds `now - retention`, unless a row in it matches `keep_while` (an outbox row not relayed);
- it deletes rows before the cutoff from the default partition (the same `keep_while` spares
  rows), and rows before the cutoff from the table's `forget_with` companion;
- it records the cutoff as the table's watermark in `partition_watermarks`, never moving it back:
  the event consumer parks an event from before the inbox's watermark, as its id may be gone.

Every statement waits at most `lock_timeout` for its lock: a busy table fails the step, not the
pods' queries, and the next run (partitions exist `ahead` periods early) does it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum

import asyncpg

from billing_common.db import quote_ident

log = logging.getLogger(__name__)


class Step(StrEnum):
    DAY = "day"
    MONTH = "month"

    def start(self, instant: datetime) -> datetime:
        """The start of the period holding `instant` (UTC)."""
        moment = instant.astimezone(UTC)
        day = moment.replace(hour=0, minute=0, second=0, microsecond=0)
        return day if self is Step.DAY else day.replace(day=1)

    def after(self, start: datetime) -> datetime:
        """The start of the period after the one starting at `start`."""
        if self is Step.DAY:
            return start + timedelta(days=1)
        return (start.replace(day=28) + timedelta(days=4)).replace(day=1)

    def suffix(self, start: datetime) -> str:
        return start.strftime("%Y%m%d" if self is Step.DAY else "%Y%m")


@dataclass(frozen=True)
class TimePartitioned:
    table: str
    column: str
    step: Step
    retention: timedelta
    ahead: int = 3
    # A partition with a row matching this SQL condition is kept past its retention.
    keep_while: str = ""
    # A table whose rows (by the same column) are forgotten with the partitions' rows.
    forget_with: str = ""

    def __post_init__(self) -> None:
        if self.retention < timedelta(days=1 if self.step is Step.DAY else 31):
            raise ValueError(f"the retention of {self.table} is shorter than one of its partitions")

    def cutoff(self, now: datetime) -> datetime:
        """Rows before this instant are dropped; every row at or after it is kept."""
        return self.step.start(now - self.retention)

    def partition(self, start: datetime) -> str:
        return f"{self.table}_p{self.step.suffix(start)}"


def event_tables(outbox_retention: timedelta, inbox_retention: timedelta) -> list[TimePartitioned]:
    """The outbox and inbox every service has (common migration 0003)."""
    return [
        TimePartitioned(
            "outbox", "created_at", Step.DAY, outbox_retention, ahead=7, keep_while="published_at IS NULL"
        ),
        TimePartitioned("inbox", "occurred_at", Step.DAY, inbox_retention, ahead=7),
    ]


@dataclass
class Maintenance:
    created: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    moved_rows: int = 0
    deleted_rows: int = 0


async def maintain(
    conn: asyncpg.Connection,
    schema: str,
    tables: Sequence[TimePartitioned],
    now: datetime,
    *,
    lock_timeout: timedelta = timedelta(seconds=5),
) -> Maintenance:
    """Create, move and drop partitions of `tables` in `schema` as of `now`; each table in its own
    transaction, so one that cannot get its lock leaves the others done."""
    done = Maintenance()
    await conn.execute(f"SET search_path TO {quote_ident(schema)}")
    await conn.execute(
        "SELECT set_config('lock_timeout', $1, false)", f"{int(lock_timeout.total_seconds() * 1000)}ms"
    )
    try:
        for table in tables:
            async with conn.transaction():
                # Pods that migrate at start may maintain at once: one at a time per table.
                lock = f"billing:partitions:{schema}.{table.table}"
                await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", lock)
                await _maintain_table(conn, table, now, done)
    finally:
        await conn.execute("SET lock_timeout TO DEFAULT")
    if done.created or done.dropped:
        log.info(
            "partitions maintained",
            extra={"schema": schema, "partitions_made": done.created, "partitions_dropped": done.dropped},
        )
    return done


async def _maintain_table(
    conn: asyncpg.Connection, table: TimePartitioned, now: datetime, done: Maintenance
) -> None:
    column = quote_ident(table.column)
    default = quote_ident(f"{table.table}_default")
    cutoff = table.cutoff(now)
    existing = await _partitions(conn, table)
    wanted = {table.step.start(now)}
    for _ in range(table.ahead):
        wanted.add(table.step.after(max(wanted)))
    held = (
        f"SELECT DISTINCT date_trunc('{table.step.value}', {column}, 'UTC') AS start"
        f" FROM {default} WHERE {column} >= $1"
    )
    for row in await conn.fetch(held, cutoff):
        wanted.add(row["start"].astimezone(UTC))
    for start in sorted(wanted - set(existing)):
        done.moved_rows += await _create(conn, table, start)
        done.created.append(table.partition(start))
    for start, name in sorted(existing.items()):
        if table.step.after(start) > cutoff:
            continue
        if table.keep_while and await conn.fetchval(
            f"SELECT EXISTS (SELECT 1 FROM {quote_ident(name)} WHERE {table.keep_while})"
        ):
            continue
        await conn.execute(f"DROP TABLE {quote_ident(name)}")
        done.dropped.append(name)
    spare = f" AND NOT ({table.keep_while})" if table.keep_while else ""
    deleted = await conn.execute(f"DELETE FROM {default} WHERE {column} < $1{spare}", cutoff)
    done.deleted_rows += int(deleted.split()[-1])
    if table.forget_with:
        await conn.execute(f"DELETE FROM {quote_ident(table.forget_with)} WHERE {column} < $1", cutoff)
    await conn.execute(
        """INSERT INTO partition_watermarks (table_name, forgotten_before) VALUES ($1, $2)
           ON CONFLICT (table_name) DO UPDATE SET forgotten_before =
               greatest(partition_watermarks.forgotten_before, EXCLUDED.forgotten_before)""",
        table.table,
        cutoff,
    )


async def _partitions(conn: asyncpg.Connection, table: TimePartitioned) -> dict[datetime, str]:
    """The table's partitions other than the default, by the start of their range."""
    rows = await conn.fetch(
        """SELECT c.relname AS name FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
           WHERE i.inhparent = $1::regclass AND c.relname <> $2""",
        table.table,
        f"{table.table}_default",
    )
    prefix = f"{table.table}_p"
    pattern = "%Y%m%d" if table.step is Step.DAY else "%Y%m"
    return {
        datetime.strptime(r["name"].removeprefix(prefix), pattern).replace(tzinfo=UTC): r["name"]
        for r in rows
        if r["name"].startswith(prefix)
    }


async def _create(conn: asyncpg.Connection, table: TimePartitioned, start: datetime) -> int:
    """Create the partition of the period starting at `start`, taking over the rows the default
    partition holds for it. Attached rather than created as a partition: attaching locks the
    parent only against other DDL, not against the pods' reads and writes."""
    parent, column = quote_ident(table.table), quote_ident(table.column)
    default = quote_ident(f"{table.table}_default")
    name = quote_ident(table.partition(start))
    end = table.step.after(start)
    await conn.execute(f"CREATE TABLE {name} (LIKE {parent} INCLUDING DEFAULTS INCLUDING CONSTRAINTS)")
    moved = await conn.execute(
        f"""WITH taken AS (DELETE FROM {default} WHERE {column} >= $1 AND {column} < $2 RETURNING *)
            INSERT INTO {name} SELECT * FROM taken""",
        start,
        end,
    )
    bounds = f"FROM ('{start.isoformat()}') TO ('{end.isoformat()}')"
    await conn.execute(f"ALTER TABLE {parent} ATTACH PARTITION {name} FOR VALUES {bounds}")
    return int(moved.split()[-1])
