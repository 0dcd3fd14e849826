"""Tier values in the contracts' words, matched by name (shared by the tier.changed events and the
gRPC answers), and as the tier columns store them: a tier's rank (so reordering tiers needs a
migration of those columns)."""

from __future__ import annotations

from billing.events.v1 import tier_pb2 as events
from billing_common.protos import ProtoEnum
from billing_common.tiers import Tier
from tier.domain.accounts import AccountKind

STORED_TIERS = {tier.rank: tier for tier in Tier}
EVENT_ACCOUNT_KINDS = ProtoEnum(AccountKind, events.AccountKind, "ACCOUNT_KIND_")
