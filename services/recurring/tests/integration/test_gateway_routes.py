"""A merchant that gateway-adapter routes to Stripe is paced and halted as Stripe by a billing run,
while the sandbox merchants of the same run are charged: recurring keys on the gateway each answer
names, never on a guess of its own."""

from __future__ import annotations

from datetime import date, timedelta

import pytest

from billing.common.v1 import common_pb2 as common
from billing.recurring.v1 import recurring_pb2 as pb
from billing.recurring.v1 import recurring_pb2_grpc
from billing_common.grpc_client import open_channel
from billing_devtools.testing.plugin import EventCollector, InfraEnv, eventually
from billing_devtools.testing.processes import service_process
from billing_devtools.testing.stripe import local_stripe

from .conftest import custom, dependencies, run_until_settled

pytestmark = pytest.mark.integration
DAY = date(2031, 9, 1)
NEXT_WEEK = DAY + timedelta(days=7)
STRIPE_LIMIT = 5
ROUTED = 15
SANDBOX = 10
WEEKLY = common.BILLING_FREQUENCY_WEEKLY


@pytest.mark.timeout(240)
async def test_a_merchant_routed_to_stripe_is_paced_and_halted_as_stripe_while_sandbox_merchants_are_charged(
    env: InfraEnv,
) -> None:
    async with (
        local_stripe() as stripe,
        dependencies(
            env,
            GATEWAY_ROUTES="m-stripe:CARD=stripe",
            GATEWAY_STRIPE_API_BASE=stripe.base,
            GATEWAY_STRIPE_API_KEYS="default=sk_test_local_0000000000000000",
            GATEWAY_RATE_LIMITS=f"stripe={STRIPE_LIMIT}",
            # Room for this busy machine's jitter between gateway-adapter's pacer and Stripe's arrival
            # times, which is what the headroom is for: at 15% (turns 235 ms apart) a loaded CI
            # machine once delivered 6 requests within one second.
            GATEWAY_RATE_HEADROOM_PERCENT="30",
            GATEWAY_BREAKER_RESET_TIMEOUT="1s",
        ) as deps,
        EventCollector(env.infra.amqp_url, env.exchange, ["run.*"]) as events,
    ):
        # recurring in a process of its own: this one's event loop only receives Stripe's requests,
        # so the arrival times it records are not bunched by a busy loop.
        async with (
            service_process("recurring", "RECURRING", deps.recurring_settings()) as recurring,
            open_channel(recurring.address, env.token("operator")) as channel,
        ):
            stub = recurring_pb2_grpc.RecurringServiceStub(channel)
            for n in range(ROUTED):
                await stub.CreateSubscription(
                    custom(f"routed-{n}", 1000 + n, WEEKLY, DAY, token="pm_card_visa", merchant="m-stripe")
                )
            for n in range(SANDBOX):
                await stub.CreateSubscription(
                    custom(f"sandbox-{n}", 2000 + n, WEEKLY, DAY, merchant="m-sandbox")
                )

            # Stripe up: the routed card payments reach it no faster than its limit.
            first = await run_until_settled(stub, DAY, timeout=90)
            assert first.state == pb.RUN_STATE_COMPLETED
            assert (first.counts.charged, first.counts.failed) == (ROUTED + SANDBOX, 0)
            assert len(intents(stripe.fake.requests)) == ROUTED
            assert stripe.busiest_second() <= STRIPE_LIMIT
            assert len(await deps.sandbox_charges()) == SANDBOX
            gateways = await deps.recurring_rows(
                """SELECT gateway, count(*) AS n FROM work_items WHERE run_id = $1
                   GROUP BY gateway ORDER BY gateway""",
                first.run_id,
            )
            assert [(r["gateway"], r["n"]) for r in gateways] == [
                ("sandbox-card", SANDBOX),
                ("stripe", ROUTED),
            ]

            # Stripe unreachable: the run halts Stripe's part only; the sandbox merchants are charged.
            await stripe.stop()
            halted = await run_until_settled(stub, NEXT_WEEK, timeout=90)
            assert halted.state == pb.RUN_STATE_HALTED
            assert list(halted.halted_gateways) == ["stripe"]
            assert (halted.counts.charged, halted.counts.deferred, halted.counts.failed) == (
                SANDBOX,
                ROUTED,
                0,
            )
            assert len(await deps.sandbox_charges()) == 2 * SANDBOX
            [announced] = [e for e in await events.wait_for("run.halted") if e.run_id == halted.run_id]
            # The items deferred when the halt was decided; the pacer may hold some back until later.
            assert announced.gateway == "stripe" and 0 < announced.deferred_items <= ROUTED

            # Stripe back: resuming Stripe's part charges the routed merchant, still at Stripe's pace.
            await stripe.start()
            await stub.ResumeRun(pb.ResumeRunRequest(run_id=halted.run_id, gateway="stripe"))

            async def completed() -> pb.Run | None:
                found = (await stub.GetRun(pb.GetRunRequest(run_id=halted.run_id))).run
                return found if found.state == pb.RUN_STATE_COMPLETED else None

            done = await eventually(completed, timeout=60)
            assert (done.counts.charged, done.counts.deferred, done.counts.failed) == (ROUTED + SANDBOX, 0, 0)
            assert len(intents(stripe.fake.requests)) == 2 * ROUTED
            assert stripe.busiest_second() <= STRIPE_LIMIT


def intents(requests: list[dict[str, object]]) -> list[dict[str, object]]:
    """The charges that reached Stripe (payment intents created)."""
    return [r for r in requests if r["path"] == "/v1/payment_intents"]
