"""The database refuses an unbalanced ledger transaction and any change to a written entry."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime

import asyncpg
import pytest

from billing_common import db
from billing_devtools.testing.plugin import InfraEnv
from recurring.entrypoints.main import MIGRATIONS

INSERT = """INSERT INTO ledger_entries (ledger_transaction_id, customer, account, amount_minor, currency,
                                        kind, reference, created_at)
            SELECT e.ltx, 'acme', CASE WHEN e.amount > 0 THEN 'receivable:acme' ELSE 'revenue' END,
                   e.amount, e.currency, 'invoice', 'inv_1', $4
            FROM unnest($1::text[], $2::bigint[], $3::text[]) AS e(ltx, amount, currency)"""
AT = datetime(2026, 11, 21, tzinfo=UTC)


@pytest.fixture
async def ledger(env: InfraEnv) -> AsyncIterator[asyncpg.Connection]:
    """A connection as recurring's own login role to a freshly migrated recurring schema."""
    schema = f"recurring_{env.run_id}"
    env.schemas.append(schema)
    await db.provision(env.infra.postgres_admin_url, schema, schema)
    dsn = db.dsn_with_user(env.infra.postgres_admin_url, schema)
    conn = await asyncpg.connect(dsn, server_settings={"search_path": schema})
    try:
        await db.migrate(conn, schema, [*db.common_migrations(), *db.migrations_in(MIGRATIONS)])
        yield conn
    finally:
        await conn.close()


async def test_a_balanced_ledger_transaction_commits(ledger: asyncpg.Connection) -> None:
    await ledger.execute(INSERT, ["ltx_1", "ltx_1"], [1999, -1999], ["USD", "USD"], AT)

    assert await ledger.fetchval("SELECT count(*) FROM ledger_entries") == 2


@pytest.mark.parametrize(
    ("amounts", "currencies"),
    [
        pytest.param([1999, -1998], ["USD", "USD"], id="off-by-one-cent"),
        pytest.param([1999], ["USD"], id="one-sided"),
        pytest.param([1999, -1999], ["USD", "EUR"], id="two-currencies"),
    ],
)
async def test_an_unbalanced_ledger_transaction_cannot_commit(
    ledger: asyncpg.Connection, amounts: list[int], currencies: list[str]
) -> None:
    with pytest.raises(asyncpg.CheckViolationError, match="does not balance"):
        await ledger.execute(INSERT, ["ltx_bad"] * len(amounts), amounts, currencies, AT)

    assert await ledger.fetchval("SELECT count(*) FROM ledger_entries") == 0


async def test_one_bad_transaction_refuses_the_whole_statement(ledger: asyncpg.Connection) -> None:
    with pytest.raises(asyncpg.CheckViolationError):
        await ledger.execute(
            INSERT, ["ltx_ok", "ltx_ok", "ltx_bad"], [500, -500, 700], ["USD", "USD", "USD"], AT
        )

    assert await ledger.fetchval("SELECT count(*) FROM ledger_entries") == 0


async def test_written_entries_can_be_neither_changed_nor_removed(ledger: asyncpg.Connection) -> None:
    await ledger.execute(INSERT, ["ltx_1", "ltx_1"], [1999, -1999], ["USD", "USD"], AT)

    with pytest.raises(asyncpg.RestrictViolationError, match="append-only"):
        await ledger.execute("UPDATE ledger_entries SET amount_minor = 0")
    with pytest.raises(asyncpg.RestrictViolationError, match="append-only"):
        await ledger.execute("DELETE FROM ledger_entries")
    assert await ledger.fetchval("SELECT sum(abs(amount_minor)) FROM ledger_entries") == 3998


async def test_the_balance_check_reads_only_the_written_transactions_however_large_the_ledger(
    ledger: asyncpg.Connection,
) -> None:
    """Checking a posting must not read the whole ledger: that made every posting of a large run
    slower than the last."""
    earlier = [f"ltx_{n // 2}" for n in range(40_000)]
    await ledger.execute(INSERT, earlier, [(-1) ** n * 1999 for n in range(40_000)], ["USD"] * 40_000, AT)
    await ledger.execute("ANALYZE ledger_entries")

    rows_read = """SELECT coalesce(seq_tup_read, 0) + coalesce(idx_tup_fetch, 0) FROM pg_stat_xact_user_tables
                   WHERE schemaname = current_schema() AND relname = 'ledger_entries'"""
    async with ledger.transaction():  # the session's counts move only by what happens in between
        before = await ledger.fetchval(rows_read)
        # A batch's postings: 200 transactions of two entries each.
        posted = [f"ltx_new_{n // 2}" for n in range(400)]
        await ledger.execute(INSERT, posted, [(-1) ** n * 2500 for n in range(400)], ["USD"] * 400, AT)
        read = await ledger.fetchval(rows_read) - before

    assert read <= 400  # the batch's own entries, not the 40,000 before them
