"""Redis losing every key under tier: the scan lock's fencing tokens must keep growing."""

import asyncio
import logging

import pytest

from billing.tier.v1 import tier_pb2 as pb
from billing_devtools.testing.plugin import InfraEnv
from billing_devtools.testing.servers import RedisServer

from .conftest import build_estate, run_scan, tier_service


async def test_after_a_redis_flush_the_next_scan_runs_without_its_worker_crashing(
    private_redis: tuple[InfraEnv, RedisServer], caplog: pytest.LogCaptureFixture
) -> None:
    env, redis = private_redis
    async with tier_service(env) as tier:
        await build_estate(tier)
        for n in range(4):
            assert (await run_scan(tier, pb.SCAN_KIND_FULL, f"before-{n}")).state == pb.SCAN_STATE_COMPLETED
        await asyncio.to_thread(redis.flush)
        caplog.clear()

        after = await run_scan(tier, pb.SCAN_KIND_FULL, "after-the-flush")

        assert after.state == pb.SCAN_STATE_COMPLETED
        crashes = [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert [r.getMessage() for r in crashes] == []
