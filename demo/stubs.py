"""Channels to the five services as one caller, and the few waits the demo needs."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import grpc

from billing.dunning.v1 import dunning_pb2_grpc
from billing.quota.v1 import quota_pb2_grpc
from billing.recurring.v1 import recurring_pb2_grpc
from billing.tier.v1 import tier_pb2 as tpb
from billing.tier.v1 import tier_pb2_grpc
from billing_common.grpc_client import open_channel

SCAN_TIMEOUT_S = 120.0


@dataclass
class Stubs:
    quota: quota_pb2_grpc.QuotaServiceAsyncStub
    recurring: recurring_pb2_grpc.RecurringServiceAsyncStub
    dunning: dunning_pb2_grpc.DunningServiceAsyncStub
    tier: tier_pb2_grpc.TierServiceAsyncStub
    channels: list[grpc.aio.Channel] = field(default_factory=list)

    @classmethod
    def connect(cls, addresses: dict[str, str], token: str) -> Stubs:
        channels = {name: open_channel(address, token) for name, address in addresses.items()}
        return cls(
            quota_pb2_grpc.QuotaServiceStub(channels["quota"]),
            recurring_pb2_grpc.RecurringServiceStub(channels["recurring"]),
            dunning_pb2_grpc.DunningServiceStub(channels["dunning"]),
            tier_pb2_grpc.TierServiceStub(channels["tier"]),
            list(channels.values()),
        )

    async def close(self) -> None:
        for channel in self.channels:
            await channel.close()

    async def scan(self, key: str) -> Any:
        """A full tier scan, waited for (the scan runs in the background)."""
        started = await self.tier.RunScan(tpb.RunScanRequest(kind=tpb.SCAN_KIND_FULL, idempotency_key=key))
        async with asyncio.timeout(SCAN_TIMEOUT_S):
            while True:
                scan = (await self.tier.GetScan(tpb.GetScanRequest(scan_id=started.scan.scan_id))).scan
                if scan.state in (tpb.SCAN_STATE_COMPLETED, tpb.SCAN_STATE_FAILED):
                    return scan
                await asyncio.sleep(0.1)


async def pages(call: Callable[..., Any], request: Any, items: str) -> list[Any]:
    """Every item of a paged list RPC."""
    found: list[Any] = []
    while True:
        reply = await call(request)
        found.extend(getattr(reply, items))
        if not reply.next_page_token:
            return found
        request.page_token = reply.next_page_token
