"""ChargeBatch, pacing lanes and charge leases over real gRPC, PostgreSQL, Redis and RabbitMQ."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from billing.common.v1 import common_pb2 as c
from billing.gateway.v1 import gateway_pb2 as pb
from billing.gateway.v1 import gateway_pb2_grpc
from billing_devtools.testing.plugin import EventCollector, InfraEnv
from gateway_adapter.domain.routing import Routes

from .conftest import Gateway, busiest_second, gateway_service

pytestmark = pytest.mark.integration

CARD, ACH = c.PAYMENT_METHOD_TYPE_CARD, c.PAYMENT_METHOD_TYPE_ACH


def charge(
    key: str,
    token: str = "tok_success",
    amount: int = 1999,
    *,
    merchant: str = "merchant-a",
    method: int = CARD,
    currency: str = "USD",
    lane: int = pb.LANE_UNSPECIFIED,
) -> pb.ChargeRequest:
    return pb.ChargeRequest(
        merchant_id=merchant,
        payment_method=c.PaymentMethod(type=method, gateway_token=token),  # type: ignore[arg-type]
        amount=c.Money(amount_minor=amount, currency=currency),
        idempotency_key=key,
        caller_reference=f"inv-{key}",
        lane=lane,  # type: ignore[arg-type]
    )


async def charge_batch(gateway: Gateway, *charges: pb.ChargeRequest) -> list[pb.ChargeResult]:
    response = await gateway.stub.ChargeBatch(pb.ChargeBatchRequest(charges=charges))
    return list(response.results)


async def test_a_batch_makes_each_charge_once_with_its_own_outcome_gateway_and_event(env: InfraEnv) -> None:
    async with (
        gateway_service(env, routes=Routes.from_setting("merchant-b:CARD=sandbox-ach")) as gateway,
        EventCollector(env.infra.amqp_url, env.exchange, ["payment.*"]) as events,
    ):
        batch = [
            charge("b-ok"),
            charge("b-declined", "tok_insufficient_funds"),
            charge("b-unreachable", "tok_gateway_unreachable"),
            charge("b-unknown", "tok_timeout_charged"),
            charge("b-ach", "ach_settles", method=ACH),
            charge("b-routed", merchant="merchant-b"),
        ]
        first = await charge_batch(gateway, *batch)

        assert [r.idempotency_key for r in first] == [request.idempotency_key for request in batch]
        assert [r.payment.status for r in first] == [
            c.PAYMENT_STATUS_SUCCEEDED,
            c.PAYMENT_STATUS_DECLINED,
            c.PAYMENT_STATUS_FAILED,
            c.PAYMENT_STATUS_UNKNOWN,
            c.PAYMENT_STATUS_PENDING,
            c.PAYMENT_STATUS_SUCCEEDED,
        ]
        assert [r.payment.gateway for r in first] == ["sandbox-card"] * 4 + ["sandbox-ach"] * 2
        assert not any(r.replayed or r.refusal for r in first)
        assert [r.payment.caller_reference for r in first] == [f"inv-{r.idempotency_key}" for r in first]
        # Each charge announced once, as Charge announces it (an unknown outcome waits for the janitor).
        await events.wait_for("payment.succeeded", lambda e: e.payment.idempotency_key == "b-routed")
        await events.wait_for("payment.pending")
        failed = await events.wait_for(
            "payment.failed", lambda e: e.payment.idempotency_key == "b-unreachable"
        )
        announced = sorted(
            (kind, event.payment.idempotency_key)
            for kind, event in events.events
            if kind != "payment.reconciled"
        )
        assert announced == [
            ("payment.failed", "b-declined"),
            ("payment.failed", "b-unreachable"),
            ("payment.pending", "b-ach"),
            ("payment.succeeded", "b-ok"),
            ("payment.succeeded", "b-routed"),
        ]
        assert failed[0].payment.gateway == "sandbox-card"

        again = await charge_batch(gateway, *batch)

        # Replayed key by key, the gateway not called again; the unreachable one may run again.
        assert [r.replayed for r in again] == [True, True, False, True, True, True]
        assert [r.payment.payment_id for r in again] == [r.payment.payment_id for r in first]
        calls = [await gateway.gateway_calls(request.idempotency_key) for request in batch]
        assert calls == [1, 1, 0, 1, 1, 1]


async def test_in_a_batch_a_reused_or_repeated_key_is_refused_alone(env: InfraEnv) -> None:
    async with gateway_service(env) as gateway:
        await gateway.charge("used-before", amount=500)

        results = await charge_batch(
            gateway,
            charge("fine-1"),
            charge("used-before", amount=700),
            charge("fine-2"),
            charge("fine-2"),
        )

        assert [r.refusal for r in results] == [
            pb.CHARGE_REFUSAL_UNSPECIFIED,
            pb.CHARGE_REFUSAL_KEY_REUSED,
            pb.CHARGE_REFUSAL_UNSPECIFIED,
            pb.CHARGE_REFUSAL_INVALID_ARGUMENT,
        ]
        assert "amount" in results[1].message and "twice" in results[3].message
        assert not results[1].HasField("payment") and not results[3].HasField("payment")
        assert results[0].payment.status == results[2].payment.status == c.PAYMENT_STATUS_SUCCEEDED
        for key in ("fine-1", "used-before", "fine-2"):
            assert await gateway.gateway_calls(key) == 1
        stored = await gateway.pool.fetchval(
            "SELECT amount_minor FROM payments WHERE idempotency_key = 'used-before'"
        )
        assert stored == 500


async def test_a_batch_with_a_malformed_charge_is_refused_whole_naming_it(env: InfraEnv) -> None:
    async with gateway_service(env) as gateway:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await charge_batch(gateway, charge("whole-1"), charge("whole-2", currency="usd"))

        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "charges[1].amount.currency" in (refused.value.details() or "")
        assert await gateway.gateway_calls() == 0


async def test_interactive_charges_keep_flowing_while_a_batch_saturates_the_limit(env: InfraEnv) -> None:
    limit = 20
    async with gateway_service(
        env, rate_limits={"sandbox-card": limit}, batch_max_wait=timedelta(seconds=3)
    ) as gateway:
        loop = asyncio.get_running_loop()
        batch = asyncio.ensure_future(charge_batch(gateway, *(charge(f"run-{n}") for n in range(200))))
        await asyncio.sleep(0.5)  # the batch holds the limit now
        interactive: list[float] = []
        for n in range(5):
            started = loop.time()
            reply = await gateway.charge(f"person-{n}")
            interactive.append(loop.time() - started)
            assert reply.payment.status == c.PAYMENT_STATUS_SUCCEEDED
            await asyncio.sleep(0.1)
        assert not batch.done()  # they went while the batch was still being paced
        results = await batch

        # A batch turn is never booked more than the horizon (200 ms) ahead: no interactive charge
        # waited for the batch's backlog (seconds of turns; a busy machine adds its own delays).
        assert max(interactive) < 1.5
        made = [r for r in results if r.HasField("payment")]
        pushed_back = [r for r in results if r.refusal == pb.CHARGE_REFUSAL_BACK_PRESSURE]
        assert len(made) + len(pushed_back) == 200
        assert 30 <= len(made) <= 80 and pushed_back
        assert all(r.retry_after.ToTimedelta() > timedelta(0) for r in pushed_back)
        # Pushed back means not sent: the gateway never saw those keys, and they may be sent again.
        assert await gateway.gateway_calls() == len(made) + 5
        assert await gateway.gateway_calls(pushed_back[0].idempotency_key) == 0
        assert await busiest_second(gateway) <= limit
        retried = await charge_batch(gateway, charge(pushed_back[0].idempotency_key))
        assert retried[0].payment.status == c.PAYMENT_STATUS_SUCCEEDED and not retried[0].replayed


async def test_concurrent_batches_are_paced_one_after_another_so_the_first_is_answered_first(
    env: InfraEnv,
) -> None:
    async with gateway_service(env, rate_limits={"sandbox-card": 20}) as gateway:
        first = asyncio.ensure_future(charge_batch(gateway, *(charge(f"first-{n}") for n in range(10))))
        await asyncio.sleep(0.1)  # the first call is booking its turns
        second = asyncio.ensure_future(charge_batch(gateway, *(charge(f"second-{n}") for n in range(10))))
        done, _ = await asyncio.wait([first, second], return_when=asyncio.FIRST_COMPLETED)
        assert done == {first}  # interleaved turns would have ended both calls together
        await second
        # Every charge of the first call reached the gateway before any of the second.
        last_of_first, first_of_second = await gateway.pool.fetchrow(
            """SELECT max(created_at) FILTER (WHERE idempotency_key LIKE 'first-%'),
                      min(created_at) FILTER (WHERE idempotency_key LIKE 'second-%')
               FROM sandbox_charges"""
        )
        assert last_of_first < first_of_second
        assert await busiest_second(gateway) <= 20


async def test_an_interactive_charge_without_a_turn_soon_is_told_when_to_retry(env: InfraEnv) -> None:
    async with gateway_service(
        env, rate_limits={"sandbox-card": 5}, interactive_max_wait=timedelta(milliseconds=300)
    ) as gateway:
        # A channel that does not retry by itself, to see the answers as they are.
        async with grpc.aio.insecure_channel(gateway.address) as channel:
            stub = gateway_pb2_grpc.GatewayServiceStub(channel)
            auth = (("authorization", f"Bearer {env.token('recurring')}"),)
            replies = await asyncio.gather(
                *(stub.Charge(charge(f"rush-{n}"), metadata=auth) for n in range(12)), return_exceptions=True
            )

            refused = [reply for reply in replies if isinstance(reply, grpc.aio.AioRpcError)]
            assert refused and len(refused) < 12
            for error in refused:
                assert error.code() == grpc.StatusCode.UNAVAILABLE
                status = rpc_status.from_call(error)
                assert status is not None
                [detail] = [d for d in status.details if d.Is(error_details_pb2.RetryInfo.DESCRIPTOR)]
                info = error_details_pb2.RetryInfo()
                detail.Unpack(info)
                assert info.retry_delay.ToTimedelta() > timedelta(0)
            # Nothing was sent for the refused ones; the channels of the suite wait and send again.
            assert await gateway.gateway_calls() == 12 - len(refused)
        again = await asyncio.gather(*(gateway.charge(f"rush-{n}") for n in range(12)))
        assert {reply.payment.status for reply in again} == {c.PAYMENT_STATUS_SUCCEEDED}
        assert await gateway.gateway_calls() == 12


async def test_a_charge_longer_than_the_processing_timeout_is_never_resolved_under_it(env: InfraEnv) -> None:
    """The lease of a live call is renewed by its pod: the janitor does not ask the gateway (which
    has not seen the charge yet: it is 2 s on its way) and so never frees the key for a second charge."""
    async with gateway_service(env, processing_timeout=timedelta(milliseconds=300)) as gateway:
        first = asyncio.ensure_future(gateway.charge("slow-1", "tok_slow_arrival"))
        await asyncio.sleep(1.2)  # four timeouts; the janitor looks every 100 ms
        second = asyncio.ensure_future(gateway.charge("slow-1", "tok_slow_arrival"))
        replies = await asyncio.gather(first, second)

        assert [reply.replayed for reply in replies] == [False, True]
        assert {reply.payment.status for reply in replies} == {c.PAYMENT_STATUS_SUCCEEDED}
        assert await gateway.gateway_calls("slow-1") == 1
