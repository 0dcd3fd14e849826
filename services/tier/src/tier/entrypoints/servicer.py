"""The gRPC servicer: thin, maps messages to use cases and answers back."""

from __future__ import annotations

from collections.abc import AsyncIterator

from billing.tier.v1 import tier_pb2 as pb
from billing.tier.v1 import tier_pb2_grpc
from billing_common import context
from billing_common.auth import OPERATOR, READERS
from billing_common.errors import InvalidArgument, NotFound
from billing_common.grpc_server import Context
from billing_common.paging import PageTokens
from billing_common.protos import optional_datetime
from tier.app.accounts import Accounts, ImportCounts, Record
from tier.app.history import History
from tier.app.ports import UpsertCounts
from tier.app.scans import Scans
from tier.entrypoints import mappers as m

# Who may call what: roles or callers named in tokens. Defaults; a deployment changes them with
# TIER_AUTH_ACCESS, e.g. `ReportSignals+=sso-gateway` for a service that reports capabilities.
ACCESS: dict[str, set[str] | frozenset[str]] = {
    "UpsertDistributors": {OPERATOR},
    "UpsertEndUsers": {OPERATOR},
    "UpsertDatabases": {OPERATOR},
    "BulkImport": {OPERATOR},
    "ReportSignals": {OPERATOR},
    "RunScan": {OPERATOR},
    "GetScan": READERS,
    "ListScans": READERS,
    "GetAccountTier": READERS,
    "GetHierarchy": READERS,
    "GetTierHistory": READERS,
    "GetTierAt": READERS,
    "ListTierChanges": READERS,
    "RebuildCache": {OPERATOR},
}
# Records of an import stream stored per transaction.
IMPORT_SLICE = 20_000


def _counts(counts: UpsertCounts) -> dict[str, int]:
    return {"inserted": counts.inserted, "updated": counts.updated, "unchanged": counts.unchanged}


class TierServicer(tier_pb2_grpc.TierServiceServicer):
    def __init__(self, accounts: Accounts, scans: Scans, history: History, pages: PageTokens) -> None:
        self._accounts = accounts
        self._scans = scans
        self._history = history
        self._pages = pages

    # ------------------------------------------------------------ hierarchy and signals

    async def UpsertDistributors(
        self, request: pb.UpsertDistributorsRequest, context: Context
    ) -> pb.UpsertDistributorsResponse:
        counts = await self._accounts.upsert_distributors([m.distributor(d) for d in request.distributors])
        return pb.UpsertDistributorsResponse(**_counts(counts))

    async def UpsertEndUsers(
        self, request: pb.UpsertEndUsersRequest, context: Context
    ) -> pb.UpsertEndUsersResponse:
        counts = await self._accounts.upsert_end_users([m.end_user(e) for e in request.end_users])
        return pb.UpsertEndUsersResponse(**_counts(counts))

    async def UpsertDatabases(
        self, request: pb.UpsertDatabasesRequest, context: Context
    ) -> pb.UpsertDatabasesResponse:
        counts = await self._accounts.upsert_databases([m.database(d) for d in request.databases])
        return pb.UpsertDatabasesResponse(**_counts(counts))

    async def BulkImport(
        self, request_iterator: AsyncIterator[pb.BulkImportRequest], context: Context
    ) -> pb.BulkImportResponse:
        totals = ImportCounts()
        pending: list[tuple[int, Record]] = []
        index = 0
        async for request in request_iterator:
            which = request.WhichOneof("record")
            if which == "distributor":
                pending.append((index, m.distributor(request.distributor)))
            elif which == "end_user":
                pending.append((index, m.end_user(request.end_user)))
            elif which == "database":
                pending.append((index, m.database(request.database)))
            else:
                raise InvalidArgument.of(f"records[{index}]", "holds no record")
            index += 1
            if len(pending) >= IMPORT_SLICE:
                totals = _add(totals, await self._accounts.bulk_import(pending))
                pending = []
        if pending:
            totals = _add(totals, await self._accounts.bulk_import(pending))
        return pb.BulkImportResponse(
            distributors=totals.distributors, end_users=totals.end_users, databases=totals.databases
        )

    async def ReportSignals(
        self, request: pb.ReportSignalsRequest, context: Context
    ) -> pb.ReportSignalsResponse:
        accepted, stale = await self._accounts.report_signals([m.signal_report(s) for s in request.signals])
        return pb.ReportSignalsResponse(accepted=accepted, stale=stale)

    # ------------------------------------------------------------ scans

    async def RunScan(self, request: pb.RunScanRequest, context: Context) -> pb.RunScanResponse:
        scan = await self._scans.request(
            m.SCAN_KINDS.get(request.kind, None), f"rpc:{context_caller()}", request.idempotency_key
        )
        return pb.RunScanResponse(scan=m.scan_pb(scan))

    async def GetScan(self, request: pb.GetScanRequest, context: Context) -> pb.GetScanResponse:
        scan = await self._scans.get(request.scan_id)
        if scan is None:
            raise NotFound(f"no scan {request.scan_id!r}")
        return pb.GetScanResponse(scan=m.scan_pb(scan))

    async def ListScans(self, request: pb.ListScansRequest, context: Context) -> pb.ListScansResponse:
        page = await self._scans.page(self._pages.read(request, start=0))
        return pb.ListScansResponse(
            scans=[m.scan_pb(scan) for scan in page.items],
            next_page_token=self._pages.next_token(request, page),
        )

    async def RebuildCache(
        self, request: pb.RebuildCacheRequest, context: Context
    ) -> pb.RebuildCacheResponse:
        accounts, seconds = await self._accounts.rebuild()
        return pb.RebuildCacheResponse(accounts=accounts, duration_ms=int(seconds * 1000))

    # ------------------------------------------------------------ tiers and history

    async def GetAccountTier(
        self, request: pb.GetAccountTierRequest, context: Context
    ) -> pb.GetAccountTierResponse:
        kind, record = await self._accounts.account_tier(request.account_id)
        return pb.GetAccountTierResponse(account_tier=m.account_tier_pb(request.account_id, kind, record))

    async def GetHierarchy(
        self, request: pb.GetHierarchyRequest, context: Context
    ) -> pb.GetHierarchyResponse:
        return pb.GetHierarchyResponse(root=m.node_pb(await self._accounts.hierarchy(request.account_id)))

    async def GetTierHistory(
        self, request: pb.GetTierHistoryRequest, context: Context
    ) -> pb.GetTierHistoryResponse:
        entries = await self._history.of(request.account_id)
        return pb.GetTierHistoryResponse(changes=[m.change_pb(e) for e in entries])

    async def GetTierAt(self, request: pb.GetTierAtRequest, context: Context) -> pb.GetTierAtResponse:
        entry = await self._history.at(request.account_id, optional_datetime(request, "at"))
        if entry is None:
            return pb.GetTierAtResponse()
        return pb.GetTierAtResponse(tier=m.tier_pb(entry.new_tier), change=m.change_pb(entry))

    async def ListTierChanges(
        self, request: pb.ListTierChangesRequest, context: Context
    ) -> pb.ListTierChangesResponse:
        page = await self._history.changes(
            optional_datetime(request, "since"), request.scan_id, self._pages.read(request, start=0)
        )
        return pb.ListTierChangesResponse(
            changes=[m.change_pb(e) for e in page.items],
            next_page_token=self._pages.next_token(request, page),
        )


def context_caller() -> str:
    return context.caller.get() or "unknown"


def _add(total: ImportCounts, more: ImportCounts) -> ImportCounts:
    return ImportCounts(
        total.distributors + more.distributors,
        total.end_users + more.end_users,
        total.databases + more.databases,
    )
