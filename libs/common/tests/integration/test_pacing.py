import asyncio
import time
from collections.abc import AsyncIterator

import pytest
from prometheus_client import REGISTRY
from redis.asyncio import Redis

from billing_common.pacing import RedisPacer
from billing_devtools.testing.plugin import InfraEnv


@pytest.fixture
async def redis(env: InfraEnv) -> AsyncIterator[Redis]:
    client = Redis.from_url(env.infra.redis_url)
    yield client
    await client.aclose()


def busiest_second(times: list[float]) -> int:
    times = sorted(times)
    return max(sum(1 for t in times[i:] if t < start + 1.0) for i, start in enumerate(times))


async def test_pods_sharing_a_name_never_exceed_its_limit_in_any_second(env: InfraEnv, redis: Redis) -> None:
    pods = [RedisPacer(redis, f"{env.run_id}:svc", {"gw": 20}, 5) for _ in range(2)]
    loop = asyncio.get_running_loop()
    turns: list[float] = []

    async def turn(pacer: RedisPacer) -> None:
        await pacer.wait_turn("gw")
        turns.append(loop.time())

    waited = REGISTRY.get_sample_value("billing_pacer_wait_seconds_count", {"gateway": "gw"}) or 0
    await asyncio.gather(*(turn(pods[n % 2]) for n in range(50)))

    assert len(turns) == 50 and busiest_second(turns) <= 20
    assert REGISTRY.get_sample_value("billing_pacer_wait_seconds_count", {"gateway": "gw"}) == waited + 50


async def test_only_limited_names_are_paced(env: InfraEnv, redis: Redis) -> None:
    namespace = f"{env.run_id}:svc"
    pacer = RedisPacer(redis, namespace, {"gw": 1, "off": 0})
    await pacer.wait_turn("other")
    await pacer.wait_turn("off")
    await pacer.wait_turn("gw")

    assert not await redis.exists(f"{namespace}:rate:other")
    assert not await redis.exists(f"{namespace}:rate:off")
    assert await redis.exists(f"{namespace}:rate:gw")


async def test_a_turn_woken_late_gives_up_its_slot_and_books_another(env: InfraEnv, redis: Redis) -> None:
    key = f"{env.run_id}:svc:rate:gw"
    pacer = RedisPacer(redis, f"{env.run_id}:svc", {"gw": 10})
    await pacer.wait_turn("gw")
    late = asyncio.create_task(pacer.wait_turn("gw"))
    await asyncio.sleep(0.03)  # it has booked the slot 100 ms on and sleeps
    time.sleep(0.3)  # noqa: ASYNC251 - a busy event loop: woken 200 ms after its slot
    await late

    seconds, micros = await redis.time()
    next_free_us = int(await redis.get(key)) - (seconds * 1_000_000 + micros)
    assert next_free_us > 50_000  # booked again just now, one interval ahead; not the stale slot
