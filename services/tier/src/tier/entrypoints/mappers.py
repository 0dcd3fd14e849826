"""Protobuf <-> domain."""

from __future__ import annotations

from billing.common.v1 import common_pb2
from billing.tier.v1 import tier_pb2 as pb
from billing_common.protos import TIERS, ProtoEnum, optional_datetime, stamp
from billing_common.tiers import Tier
from tier.app.accounts import HierarchyNode, SignalReport
from tier.app.ports import HistoryEntry
from tier.domain.accounts import AccountKind, Database, Distributor, EndUser, InventoryMode, SignalKind
from tier.domain.estate import TierRecord
from tier.domain.scans import Scan, ScanKind, ScanState

KINDS = ProtoEnum(AccountKind, pb.AccountKind, "ACCOUNT_KIND_")
INVENTORY_MODES = ProtoEnum(InventoryMode, pb.InventoryMode, "INVENTORY_MODE_")
SIGNAL_KINDS = ProtoEnum(SignalKind, pb.SignalKind, "SIGNAL_KIND_")
SCAN_KINDS = ProtoEnum(ScanKind, pb.ScanKind, "SCAN_KIND_")
SCAN_STATES = ProtoEnum(ScanState, pb.ScanState, "SCAN_STATE_")


def tier_pb(tier: Tier | None) -> common_pb2.Tier.ValueType:
    """An account without a tier yet is UNSPECIFIED."""
    return common_pb2.TIER_UNSPECIFIED if tier is None else TIERS.pb(tier)


def distributor(message: pb.Distributor) -> Distributor:
    return Distributor(message.distributor_id, message.name, message.direct, message.active)


def end_user(message: pb.EndUser) -> EndUser:
    return EndUser(message.end_user_id, message.distributor_id, message.name, message.active)


def database(message: pb.Database) -> Database:
    return Database(
        message.database_id,
        message.end_user_id,
        message.company_name,
        message.schema_name,
        INVENTORY_MODES.get(message.inventory_mode, InventoryMode.NONE),  # unset: no inventory
        message.sso_access,
        message.rest_api_access,
        message.active,
    )


def signal_report(message: pb.Signal) -> SignalReport:
    return SignalReport(
        message.account_id,
        SIGNAL_KINDS.get(message.kind, None),
        message.value,
        message.source,
        optional_datetime(message, "observed_at"),
    )


def scan_pb(scan: Scan) -> pb.Scan:
    message = pb.Scan(
        scan_id=scan.scan_id,
        kind=SCAN_KINDS.pb(scan.kind),
        trigger=scan.trigger,
        state=SCAN_STATES.pb(scan.state),
        duration_ms=scan.duration_ms,
        accounts_evaluated=scan.accounts_evaluated,
        changes=scan.changes,
        trace_id=scan.trace_id,
        error=scan.error,
    )
    stamp(message.queued_at, scan.queued_at)
    stamp(message.started_at, scan.started_at)
    stamp(message.finished_at, scan.finished_at)
    return message


def _evidence(pairs: tuple[tuple[str, str], ...]) -> list[pb.Evidence]:
    return [pb.Evidence(name=name, value=value) for name, value in pairs]


def account_tier_pb(account_id: str, kind: AccountKind, record: TierRecord | None) -> pb.AccountTier:
    message = pb.AccountTier(account_id=account_id, kind=KINDS.pb(kind))
    if record is not None:
        message.tier = tier_pb(record.decision.tier)
        message.rule_id = record.decision.rule_id
        message.rule_set_version = record.decision.rule_set_version
        message.evidence.extend(_evidence(record.decision.evidence))
        stamp(message.since, record.since)
    return message


def change_pb(entry: HistoryEntry) -> pb.TierChange:
    message = pb.TierChange(
        change_id=str(entry.change_id),
        account_id=entry.account_id,
        kind=KINDS.pb(AccountKind(entry.kind)),
        previous_tier=tier_pb(entry.previous_tier),
        new_tier=tier_pb(entry.new_tier),
        rule_id=entry.rule_id,
        rule_set_version=entry.rule_set_version,
        evidence_before=_evidence(entry.evidence_before),
        evidence_after=_evidence(entry.evidence_after),
        scan_id=entry.scan_id,
        cause=entry.cause,
    )
    stamp(message.effective_at, entry.effective_at)
    return message


def node_pb(node: HierarchyNode) -> pb.HierarchyNode:
    return pb.HierarchyNode(
        account_id=node.account_id,
        kind=KINDS.pb(node.kind),
        name=node.name,
        active=node.active,
        tier=tier_pb(node.tier),
        children=[node_pb(child) for child in node.children],
    )
