"""Redis losing every key under dunning: a case's next attempt must not wait for its lease."""

import asyncio
from datetime import timedelta

from billing.dunning.v1 import dunning_pb2 as pb
from billing_devtools.testing.plugin import InfraEnv
from billing_devtools.testing.servers import RedisServer

from .conftest import dunning_service
from .test_worker import open_cases, recurring_calls


async def test_after_a_redis_flush_a_cases_next_attempt_is_made_without_waiting_for_a_lease(
    private_redis: tuple[InfraEnv, RedisServer],
) -> None:
    env, redis = private_redis
    async with dunning_service(env) as dunning:
        await open_cases(dunning, 1)
        dunning.clock.advance(timedelta(days=1))
        worker = dunning.worker(unavailable_backoff=timedelta(minutes=5))
        for _ in range(3):  # recurring is down: the attempt is made again every 5 minutes
            assert await worker.run_once() == 1
            dunning.clock.advance(timedelta(minutes=5))
        await asyncio.to_thread(redis.flush)
        calls = recurring_calls()

        assert await worker.run_once() == 1

        assert recurring_calls() == calls + 1  # recurring was asked again, not after the lease
        case = await dunning.case("inv-0")
        assert case.state == pb.CASE_STATE_ATTEMPTING and len(case.attempts) == 1
        assert await worker.run_once() == 0  # the outcome is recorded: nothing due before the backoff
