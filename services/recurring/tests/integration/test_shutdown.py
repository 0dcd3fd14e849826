"""SIGTERM, as Kubernetes sends it when it scales a recurring pod in mid-run: the pod stops claiming,
and what it still holds when its drain runs out goes back at once, so another pod bills the rest
without waiting for a lease, each occurrence once."""

from __future__ import annotations

import signal
from datetime import date, timedelta

import pytest

from billing.common.v1 import common_pb2 as common
from billing.recurring.v1 import recurring_pb2 as pb
from billing.recurring.v1 import recurring_pb2_grpc
from billing_common.grpc_client import open_channel
from billing_devtools.testing.plugin import InfraEnv, eventually, issue_token
from billing_devtools.testing.processes import start_process

from .conftest import custom, dependencies, pb_date, recurring_service
from .test_poisoned_items import completed_run

DAY = date(2031, 6, 2)
SUBSCRIPTIONS = 40


@pytest.mark.timeout(240)
async def test_a_pod_terminated_mid_run_hands_its_items_back_and_another_bills_each_once(
    env: InfraEnv,
) -> None:
    async with dependencies(
        env, GATEWAY_SANDBOX_LATENCY="0.4s", GATEWAY_RATE_LIMITS="sandbox-card=5"
    ) as deps:
        # A lease far longer than the test: an item left claimed would wait for it, and fail the test.
        # The drain (2 s, the charge timeout) is shorter than a batch (20 charges paced at 5 a second):
        # the pod is cut off with a batch in hand.
        settings = deps.recurring_settings(
            worker_lease=timedelta(minutes=10),
            worker_batch_size=20,
            charge_timeout=timedelta(seconds=2),
            grpc_shutdown_grace=timedelta(seconds=1),
        )
        first = await start_process("recurring", "RECURRING", settings)
        try:
            async with open_channel(first.address, issue_token("operator")) as channel:
                stub = recurring_pb2_grpc.RecurringServiceStub(channel)
                for n in range(SUBSCRIPTIONS):
                    await stub.CreateSubscription(
                        custom(f"card-{n}", 1000 + n, common.BILLING_FREQUENCY_WEEKLY, DAY)
                    )
                await stub.RunBilling(pb.RunBillingRequest(billing_date=pb_date(DAY), kind=pb.RUN_KIND_DAILY))

                async def some_charged() -> bool:
                    return len(await deps.sandbox_charges()) >= 3

                await eventually(some_charged, timeout=60, interval=0.05)
            first.process.send_signal(signal.SIGTERM)
            assert await first.process.wait() == 0
        finally:
            await first.terminate()

        waiting = await deps.recurring_rows("SELECT count(*) AS n FROM work_items WHERE status = 'claimed'")
        assert waiting[0]["n"] == 0
        billed_by_first = len(await deps.sandbox_charges())
        assert billed_by_first < SUBSCRIPTIONS

        async with recurring_service(settings) as second:
            done = await completed_run(second.operator, DAY)
        assert (done.counts.charged, done.counts.failed, done.counts.parked) == (SUBSCRIPTIONS, 0, 0)
        approved = await deps.sandbox_charges("outcome = 'approved'")
        assert sorted(c["amount_minor"] for c in approved) == [1000 + n for n in range(SUBSCRIPTIONS)]
        paid = await deps.recurring_rows("SELECT count(*) AS n FROM invoices WHERE status = 'paid'")
        assert paid[0]["n"] == SUBSCRIPTIONS
