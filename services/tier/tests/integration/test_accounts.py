from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import grpc
import pytest

from billing.tier.v1 import tier_pb2 as pb
from billing_devtools.testing.rpc import field_violations

from .conftest import Tier, build_estate, database, distributor, end_user, run_scan, signal

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


async def test_upserts_are_idempotent_and_count_what_changed(tier: Tier) -> None:
    request = pb.UpsertDistributorsRequest(distributors=[distributor("d1"), distributor("d2", direct=True)])
    first = await tier.operator.UpsertDistributors(request)
    again = await tier.operator.UpsertDistributors(request)
    changed = await tier.operator.UpsertDistributors(
        pb.UpsertDistributorsRequest(
            distributors=[distributor("d1", active=False), distributor("d2", direct=True)]
        )
    )
    assert (first.inserted, first.updated, first.unchanged) == (2, 0, 0)
    assert (again.inserted, again.updated, again.unchanged) == (0, 0, 2)
    assert (changed.inserted, changed.updated, changed.unchanged) == (0, 1, 1)
    hierarchy = await tier.caller.GetHierarchy(pb.GetHierarchyRequest(account_id="d1"))
    assert hierarchy.root.kind == pb.ACCOUNT_KIND_DISTRIBUTOR and not hierarchy.root.active


async def test_bad_batches_change_nothing_and_name_every_field(tier: Tier) -> None:
    await build_estate(tier)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await tier.operator.UpsertDatabases(
            pb.UpsertDatabasesRequest(
                databases=[
                    database("new-db", "nobody"),
                    database("dist", "alpha"),
                    database("twice", "alpha"),
                    database("twice", "alpha"),
                ]
            )
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_violations(caught.value) == {
        "databases[0].end_user_id": "no end_user 'nobody'",
        "databases[1].database_id": "'dist' is already a distributor",
        "databases[3].database_id": "'twice' appears twice in the batch",
    }
    with pytest.raises(grpc.aio.AioRpcError) as unnamed:
        await tier.operator.UpsertDatabases(
            pb.UpsertDatabasesRequest(databases=[database("new-db", "alpha"), database("", "alpha")])
        )
    assert field_violations(unnamed.value) == {"databases[1].database_id": "is required"}
    assert await tier.count("databases") == 3
    with pytest.raises(grpc.aio.AioRpcError) as wrong_parent:
        await tier.operator.UpsertEndUsers(pb.UpsertEndUsersRequest(end_users=[end_user("x", "alpha")]))
    assert field_violations(wrong_parent.value) == {
        "end_users[0].distributor_id": "'alpha' is a end_user, not a distributor"
    }


async def test_signals_keep_the_newest_observation(tier: Tier) -> None:
    await build_estate(tier)
    newer = signal("alpha", pb.SIGNAL_KIND_API_CLIENTS_ACTIVE, "3", NOW)
    older = signal("alpha", pb.SIGNAL_KIND_API_CLIENTS_ACTIVE, "0", NOW - timedelta(hours=1))
    reply = await tier.operator.ReportSignals(pb.ReportSignalsRequest(signals=[newer]))
    assert (reply.accepted, reply.stale) == (1, 0)
    reply = await tier.operator.ReportSignals(pb.ReportSignalsRequest(signals=[older]))
    assert (reply.accepted, reply.stale) == (0, 1)
    conn = await tier.admin()
    try:
        assert await conn.fetchval("SELECT value FROM signals WHERE account_id = 'alpha'") == "3"
    finally:
        await conn.close()
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await tier.operator.ReportSignals(
            pb.ReportSignalsRequest(
                signals=[
                    signal("alpha", pb.SIGNAL_KIND_SSO_ACTIVE, "maybe", NOW),
                    pb.Signal(account_id="alpha", kind=pb.SIGNAL_KIND_INVENTORY_MODE, value="basic"),
                ]
            )
        )
    assert field_violations(caught.value) == {
        "signals[0].value": 'must be "true" or "false"',
        "signals[1].source": "is required (e.g. push, workos)",
        "signals[1].observed_at": "is required",
    }
    await run_scan(tier, pb.SCAN_KIND_FULL, "f")
    tier_reply = await tier.caller.GetAccountTier(pb.GetAccountTierRequest(account_id="alpha-db"))
    assert tier_reply.account_tier.rule_id == "api-plus"
    assert ("api_clients_active", "3") in [(e.name, e.value) for e in tier_reply.account_tier.evidence]


async def stream(records: list[pb.BulkImportRequest]) -> AsyncIterator[pb.BulkImportRequest]:
    for record in records:
        yield record


async def bulk_import(tier: Tier, records: list[pb.BulkImportRequest]) -> pb.BulkImportResponse:
    reply: pb.BulkImportResponse = await tier.operator.BulkImport(stream(records))
    return reply


async def test_bulk_import_streams_a_hierarchy_in_one_call(tier: Tier) -> None:
    records = [pb.BulkImportRequest(distributor=distributor(f"d{i}")) for i in range(3)]
    records += [pb.BulkImportRequest(end_user=end_user(f"e{i}", f"d{i % 3}")) for i in range(30)]
    records += [pb.BulkImportRequest(database=database(f"db{i}", f"e{i % 30}")) for i in range(300)]
    reply = await bulk_import(tier, records)
    assert (reply.distributors, reply.end_users, reply.databases) == (3, 30, 300)
    again = await bulk_import(tier, records)
    assert again.databases == 300 and await tier.count("databases") == 300
    rebuilt = await tier.operator.RebuildCache(pb.RebuildCacheRequest())
    assert rebuilt.accounts == 333
    hierarchy = await tier.caller.GetHierarchy(pb.GetHierarchyRequest(account_id="d0"))
    assert len(hierarchy.root.children) == 10 and len(hierarchy.root.children[0].children) == 10
    with pytest.raises(grpc.aio.AioRpcError) as orphan:
        await bulk_import(tier, [pb.BulkImportRequest(database=database("lost", "nobody"))])
    assert field_violations(orphan.value) == {"records[0].database.end_user_id": "no end_user 'nobody'"}


async def test_unknown_accounts_and_callers(tier: Tier) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await tier.caller.GetAccountTier(pb.GetAccountTierRequest(account_id="ghost"))
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as forbidden:
        await tier.caller.RunScan(pb.RunScanRequest(kind=pb.SCAN_KIND_FULL, idempotency_key="k"))
    assert forbidden.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.aio.AioRpcError) as no_kind:
        await tier.operator.RunScan(pb.RunScanRequest(idempotency_key="k"))
    assert field_violations(no_kind.value) == {"kind": "must be FULL, SSO or API"}
    await tier.operator.RunScan(pb.RunScanRequest(kind=pb.SCAN_KIND_FULL, idempotency_key="same"))
    with pytest.raises(grpc.aio.AioRpcError) as reused:
        await tier.operator.RunScan(pb.RunScanRequest(kind=pb.SCAN_KIND_SSO, idempotency_key="same"))
    assert reused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    with pytest.raises(grpc.aio.AioRpcError) as no_scan:
        await tier.caller.GetScan(pb.GetScanRequest(scan_id="not-a-scan"))
    assert no_scan.value.code() == grpc.StatusCode.NOT_FOUND


async def test_history_rows_cannot_be_updated_or_deleted(tier: Tier) -> None:
    await build_estate(tier)
    await run_scan(tier, pb.SCAN_KIND_FULL, "f")
    pool = await tier.env.pool(tier.settings.schema)  # the service's own login role
    try:
        async with pool.acquire() as conn:
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.execute("UPDATE tier_history SET new_tier = 3")
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.execute("DELETE FROM tier_history")
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.execute("TRUNCATE tier_history")
            assert await conn.fetchval("SELECT count(*) FROM tier_history") == 7  # and it can still read
    finally:
        await pool.close()
    admin = await tier.admin()  # even a superuser meets the trigger
    try:
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
            await admin.execute("UPDATE tier_history SET new_tier = 3")
    finally:
        await admin.close()
