"""Tier values in the contracts' words, matched by name (shared by the tier.changed events and the
gRPC answers)."""

from __future__ import annotations

from billing.common.v1 import common_pb2
from billing.events.v1 import tier_pb2 as events
from billing_common.protos import ProtoEnum
from tier.domain.accounts import AccountKind, Tier

TIERS = ProtoEnum(Tier, common_pb2.Tier, "TIER_")
EVENT_ACCOUNT_KINDS = ProtoEnum(AccountKind, events.AccountKind, "ACCOUNT_KIND_")
