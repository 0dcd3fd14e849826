"""Redis losing every key under recurring: run locks must keep fencing without refusing their holder."""

import asyncio
from datetime import date, timedelta

from billing.recurring.v1 import recurring_pb2 as pb
from billing_devtools.testing.plugin import InfraEnv
from billing_devtools.testing.servers import RedisServer
from recurring.settings import RecurringSettings

from .conftest import pb_date, recurring_service

DAY = date(2031, 5, 5)
NOBODY = "127.0.0.1:9"  # no subscription is due: quota and the gateway are never called


async def test_after_a_redis_flush_a_dates_run_is_started_again_and_not_refused(
    private_redis: tuple[InfraEnv, RedisServer],
) -> None:
    env, redis = private_redis
    settings = env.settings(
        RecurringSettings,
        "recurring",
        quota_addr=NOBODY,
        gateway_adapter_addr=NOBODY,
        scheduler_interval=timedelta(hours=1),
    )
    async with recurring_service(settings) as recurring:
        request = pb.RunBillingRequest(billing_date=pb_date(DAY), kind=pb.RUN_KIND_DAILY)
        runs = [(await recurring.operator.RunBilling(request)).run for _ in range(3)]
        await asyncio.to_thread(redis.flush)

        again = (await recurring.operator.RunBilling(request)).run

        assert again.run_id == runs[0].run_id  # the date's one run, looked at again
        assert again.state == pb.RUN_STATE_COMPLETED
