"""Tier scans over a large estate: 1,000 distributors, 100,000 end users, 1,000,000 databases.

Figures: bulk load (streaming BulkImport), the first full scan (every account gets its first tier;
target < 60 s), a repeated full scan with nothing changed (zero writes; time as a ratio to the
first), and a full scan after 1% of the end users turned SSO on. TIER_BENCH_SCALE=0.1 runs a
tenth of the estate for a quick look.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import asyncpg
import grpc

from bench.harness import bench_env, server_process
from billing.tier.v1 import tier_pb2 as pb
from billing.tier.v1 import tier_pb2_grpc
from billing_common.grpc_client import open_channel
from billing_common.service import run_event_loop
from billing_devtools.testing.plugin import InfraEnv
from tier.entrypoints.main import MIGRATIONS, build
from tier.settings import TierSettings

SCALE = float(os.environ.get("TIER_BENCH_SCALE", "1"))
DISTRIBUTORS = max(1, int(1_000 * SCALE))
END_USERS = max(1, int(100_000 * SCALE))
DATABASES_PER_END_USER = 10
MODES = (pb.INVENTORY_MODE_NONE, pb.INVENTORY_MODE_BASIC, pb.INVENTORY_MODE_ADVANCED)
SIGNAL_BATCH = 10_000


def tier_factory(settings: TierSettings) -> Any:
    return build(settings)


def _record(kind: str, message: Any) -> pb.BulkImportRequest:
    return pb.BulkImportRequest(**{kind: message})


def estate() -> Iterator[pb.BulkImportRequest]:
    """Every 10th distributor is a direct customer, every 20th end user is standalone."""
    for d in range(DISTRIBUTORS):
        yield _record(
            "distributor",
            pb.Distributor(distributor_id=f"d{d}", name=f"D{d}", direct=d % 10 == 0, active=True),
        )
    for e in range(END_USERS):
        parent = "" if e % 20 == 0 else f"d{e % DISTRIBUTORS}"
        yield _record(
            "end_user", pb.EndUser(end_user_id=f"e{e}", distributor_id=parent, name=f"E{e}", active=True)
        )
    for e in range(END_USERS):
        for n in range(DATABASES_PER_END_USER):
            db = e * DATABASES_PER_END_USER + n
            yield _record(
                "database",
                pb.Database(
                    database_id=f"db{db}",
                    end_user_id=f"e{e}",
                    company_name=f"Company {e}",
                    schema_name=f"s{db}",
                    inventory_mode=MODES[db % 3],
                    sso_access=db % 3 == 0,
                    rest_api_access=db % 4 == 0,
                    active=True,
                ),
            )


def bulk_load(target: str, token: str) -> pb.BulkImportResponse:
    """The blocking client streams from its own thread, so the generator is not the bottleneck."""
    with grpc.insecure_channel(target) as channel:
        stub = tier_pb2_grpc.TierServiceStub(channel)
        reply: pb.BulkImportResponse = stub.BulkImport(
            estate(), metadata=(("authorization", f"Bearer {token}"),)
        )
        return reply


def _signal(account: str, kind: Any, value: str) -> pb.Signal:
    signal = pb.Signal(account_id=account, kind=kind, value=value, source="bench")
    signal.observed_at.FromDatetime(datetime.now(UTC))
    return signal


async def report(stub: Any, signals: list[pb.Signal]) -> None:
    for start in range(0, len(signals), SIGNAL_BATCH):
        await stub.ReportSignals(pb.ReportSignalsRequest(signals=signals[start : start + SIGNAL_BATCH]))


async def scan(stub: Any, key: str) -> tuple[pb.Scan, float]:
    started = time.perf_counter()
    reply = await stub.RunScan(pb.RunScanRequest(kind=pb.SCAN_KIND_FULL, idempotency_key=key))
    while True:
        current = (await stub.GetScan(pb.GetScanRequest(scan_id=reply.scan.scan_id))).scan
        if current.state in (pb.SCAN_STATE_COMPLETED, pb.SCAN_STATE_FAILED):
            assert current.state == pb.SCAN_STATE_COMPLETED, current.error
            return current, time.perf_counter() - started
        await asyncio.sleep(0.05)


async def writes(env: InfraEnv, schema: str) -> tuple[int, int, int]:
    """History rows, outbox rows and the highest tier revision: unchanged means nothing was written."""
    conn = await asyncpg.connect(env.infra.postgres_admin_url)
    try:
        row = await conn.fetchrow(
            f"""SELECT (SELECT count(*) FROM "{schema}".tier_history),
                       (SELECT count(*) FROM "{schema}".outbox),
                       (SELECT coalesce(max(revision), 0) FROM "{schema}".account_tiers)"""
        )
        assert row is not None
        return int(row[0]), int(row[1]), int(row[2])
    finally:
        await conn.close()


async def main() -> None:
    databases = END_USERS * DATABASES_PER_END_USER
    print(f"estate: {DISTRIBUTORS:,} distributors, {END_USERS:,} end users, {databases:,} databases")
    async with bench_env() as env:
        settings = env.settings(
            TierSettings,
            "tier",
            scan_schedule_full="",
            scan_schedule_sso="",
            scan_schedule_api="",
        )
        with server_process("bench.tier_scan:tier_factory", settings, str(MIGRATIONS)) as served:
            token = env.token("operator")
            async with open_channel(f"127.0.0.1:{served.port}", token) as channel:
                stub = tier_pb2_grpc.TierServiceStub(channel)
                started = time.perf_counter()
                loaded = await asyncio.to_thread(bulk_load, f"127.0.0.1:{served.port}", token)
                load_seconds = time.perf_counter() - started
                total = loaded.distributors + loaded.end_users + loaded.databases
                print(
                    f"bulk load (BulkImport stream): {total:,} accounts in {load_seconds:.1f} s "
                    f"({total / load_seconds:,.0f} records/s)"
                )

                started = time.perf_counter()
                sso = [_signal(f"e{e}", pb.SIGNAL_KIND_SSO_ACTIVE, "true") for e in range(0, END_USERS, 7)]
                api = [
                    _signal(f"db{d}", pb.SIGNAL_KIND_API_CLIENTS_ACTIVE, "2") for d in range(0, databases, 5)
                ]
                await report(stub, sso + api)
                print(f"signals: {len(sso) + len(api):,} reported in {time.perf_counter() - started:.1f} s")

                first, first_seconds = await scan(stub, "first")
                print(
                    f"full scan (first tiers): {first.accounts_evaluated:,} accounts evaluated, "
                    f"{first.changes:,} changes in {first_seconds:.1f} s (target < 60 s)"
                )

                before = await writes(env, settings.schema)
                repeat, repeat_seconds = await scan(stub, "repeat")
                after = await writes(env, settings.schema)
                print(
                    f"repeated full scan: {repeat.changes} changes, history/outbox/tier writes "
                    f"{'none' if before == after else f'{before} -> {after}'}, {repeat_seconds:.1f} s "
                    f"= {repeat_seconds / first_seconds:.2f} x the first scan"
                )

                changed = [
                    _signal(f"e{e}", pb.SIGNAL_KIND_SSO_ACTIVE, "true") for e in range(1, END_USERS, 100)
                ]
                await report(stub, changed)
                one_percent, one_percent_seconds = await scan(stub, "one-percent")
                print(
                    f"full scan after 1% of end users turned SSO on: {one_percent.changes:,} changes "
                    f"in {one_percent_seconds:.1f} s"
                )

                rebuilt = await stub.RebuildCache(pb.RebuildCacheRequest())
                print(f"RebuildCache: {rebuilt.accounts:,} accounts in {rebuilt.duration_ms / 1000:.1f} s")


if __name__ == "__main__":
    run_event_loop(main())
