"""Charging through the sandbox gateway over real gRPC, PostgreSQL and RabbitMQ."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from billing.common.v1 import common_pb2 as c
from billing.gateway.v1 import gateway_pb2 as pb
from billing_common.pan import contains_card_number
from billing_devtools.testing.plugin import EventCollector, InfraEnv

from .conftest import Gateway, gateway_service

pytestmark = pytest.mark.integration

SUCCEEDED, DECLINED, FAILED, UNKNOWN, PENDING = (
    c.PAYMENT_STATUS_SUCCEEDED,
    c.PAYMENT_STATUS_DECLINED,
    c.PAYMENT_STATUS_FAILED,
    c.PAYMENT_STATUS_UNKNOWN,
    c.PAYMENT_STATUS_PENDING,
)
NONE, SOFT, HARD = c.DECLINE_KIND_NONE, c.DECLINE_KIND_SOFT, c.DECLINE_KIND_HARD
CARDHOLDER, MERCHANT, UNREACHABLE = (
    c.FAILURE_TYPE_CARDHOLDER,
    c.FAILURE_TYPE_MERCHANT,
    c.FAILURE_TYPE_GATEWAY_UNREACHABLE,
)


@pytest.fixture
async def gateway(env: InfraEnv) -> Gateway:
    async with gateway_service(env) as running:
        yield running  # type: ignore[misc]


@pytest.mark.parametrize(
    ("token", "status", "failure", "kind", "retryable", "code", "calls"),
    [
        ("tok_success", SUCCEEDED, c.FAILURE_TYPE_NONE, NONE, False, "approved", 1),
        ("tok_insufficient_funds", DECLINED, CARDHOLDER, SOFT, True, "insufficient_funds", 1),
        ("tok_do_not_honor", DECLINED, CARDHOLDER, SOFT, True, "do_not_honor", 1),
        ("tok_expired_card", DECLINED, CARDHOLDER, HARD, False, "expired_card", 1),
        ("tok_stolen_card", DECLINED, CARDHOLDER, HARD, False, "stolen_card", 1),
        ("tok_lost_card", DECLINED, CARDHOLDER, HARD, False, "lost_card", 1),
        (
            "tok_merchant_invalid_credentials",
            DECLINED,
            MERCHANT,
            NONE,
            False,
            "invalid_merchant_credentials",
            1,
        ),
        ("tok_gateway_unreachable", FAILED, UNREACHABLE, NONE, True, "gateway_unreachable", 0),
        ("tok_timeout_charged", UNKNOWN, c.FAILURE_TYPE_UNKNOWN_OUTCOME, NONE, False, "outcome_unknown", 1),
    ],
)
async def test_each_sandbox_token_is_classified(
    gateway: Gateway, token: str, status: int, failure: int, kind: int, retryable: bool, code: str, calls: int
) -> None:
    reply = await gateway.charge(f"key-{token}", token)

    payment = reply.payment
    assert (payment.status, payment.failure_type, payment.decline_kind) == (status, failure, kind)
    assert (payment.retryable, payment.normalized_code) == (retryable, code)
    assert payment.amount == c.Money(amount_minor=1999, currency="USD")
    assert payment.gateway == "sandbox-card" and payment.caller_reference == "inv-1"
    assert await gateway.gateway_calls(f"key-{token}") == calls


async def test_outcomes_are_published_with_the_caller_reference(env: InfraEnv, gateway: Gateway) -> None:
    async with EventCollector(env.infra.amqp_url, env.exchange, ["payment.*"]) as events:
        await gateway.charge("ok-1", reference="inv-ok")
        await gateway.charge("no-1", "tok_insufficient_funds", reference="inv-no")

        [succeeded] = await events.wait_for("payment.succeeded")
        [failed] = await events.wait_for("payment.failed")
    assert succeeded.payment.caller_reference == "inv-ok"
    assert succeeded.payment.amount.amount_minor == 1999
    assert failed.payment.caller_reference == "inv-no"
    assert failed.payment.normalized_code == "insufficient_funds"
    assert failed.payment.decline_kind == SOFT


async def test_flaky_token_declines_n_times_then_succeeds(gateway: Gateway) -> None:
    statuses = [(await gateway.charge(f"flaky-{n}", "tok_flaky_2")).payment.status for n in range(3)]

    assert statuses == [DECLINED, DECLINED, SUCCEEDED]


@pytest.mark.parametrize("token", ["tok_flaky_x", "tok_flaky_2x", "tok_flaky_\u0662"])
async def test_a_flaky_token_with_a_malformed_count_is_an_ordinary_token(
    gateway: Gateway, token: str
) -> None:
    charged = await gateway.charge(f"malformed-{token.encode().hex()}", token)

    assert charged.payment.status == SUCCEEDED


async def test_replayed_key_returns_the_stored_result_without_calling_the_gateway(gateway: Gateway) -> None:
    first = await gateway.charge("replay-1")
    again = await gateway.charge("replay-1")

    assert not first.replayed and again.replayed
    assert again.payment.payment_id == first.payment.payment_id
    assert again.payment.status == SUCCEEDED
    assert await gateway.gateway_calls("replay-1") == 1


async def test_replay_survives_a_restart(env: InfraEnv) -> None:
    async with gateway_service(env) as gateway:
        first = await gateway.charge("restart-1")
    async with gateway_service(env) as gateway:
        again = await gateway.charge("restart-1")
        assert again.replayed and again.payment.payment_id == first.payment.payment_id
        assert await gateway.gateway_calls("restart-1") == 1


@pytest.mark.parametrize(
    ("change", "differs"),
    [
        ({"amount": 2000}, "amount"),
        ({"currency": "EUR"}, "currency"),
        ({"merchant": "merchant-b"}, "merchant_id"),
        ({"token": "tok_other"}, "payment_method"),
    ],
)
async def test_same_key_for_a_different_charge_is_refused(
    gateway: Gateway, change: dict[str, object], differs: str
) -> None:
    await gateway.charge("conflict-1")

    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await gateway.charge("conflict-1", **change)  # type: ignore[arg-type]

    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert differs in (refused.value.details() or "")
    assert await gateway.gateway_calls("conflict-1") == 1


async def test_concurrent_calls_with_one_key_make_one_gateway_call(env: InfraEnv) -> None:
    async with gateway_service(env, sandbox_latency=timedelta(milliseconds=300)) as gateway:
        replies = await asyncio.gather(*(gateway.charge("race-1") for _ in range(8)))

        assert {reply.payment.payment_id for reply in replies} == {replies[0].payment.payment_id}
        assert {reply.payment.status for reply in replies} == {SUCCEEDED}
        assert sorted(reply.replayed for reply in replies) == [False] + [True] * 7
        assert await gateway.gateway_calls("race-1") == 1


async def test_an_unreachable_gateway_may_be_tried_again_with_the_same_key(gateway: Gateway) -> None:
    """Nothing happened on the gateway, so Stripe's rule lets the same key run again."""
    failed = await gateway.charge("unreachable-1", "tok_gateway_unreachable")
    assert failed.payment.status == FAILED

    again = await gateway.charge("unreachable-1", "tok_gateway_unreachable")
    assert not again.replayed and again.payment.payment_id == failed.payment.payment_id


async def test_bad_input_is_refused_with_the_field_and_changes_nothing(gateway: Gateway) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await gateway.charge("", amount=0, currency="usd", merchant="")

    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    status = rpc_status.from_call(refused.value)
    assert status is not None
    bad_request = error_details_pb2.BadRequest()
    assert status.details[0].Unpack(bad_request)
    fields = {violation.field for violation in bad_request.field_violations}
    assert {"merchant_id", "amount.currency", "idempotency_key"} <= fields
    # The contract allows any amount of money; a charge of nothing is refused by the gateway's rule.
    with pytest.raises(grpc.aio.AioRpcError) as nothing:
        await gateway.charge("zero-1", amount=0)
    assert nothing.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "amount.amount_minor" in (nothing.value.details() or "")
    # Three capitals pass the contract's pattern; a currency ISO 4217 does not know is refused too.
    with pytest.raises(grpc.aio.AioRpcError) as unknown:
        await gateway.charge("zzz-1", currency="ZZZ")
    assert unknown.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "amount.currency" in (unknown.value.details() or "")
    assert await gateway.pool.fetchval("SELECT count(*) FROM payments") == 0


async def test_a_card_number_is_never_stored_or_logged(
    gateway: Gateway, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("DEBUG")
    for n, token in enumerate(["tok_success", "tok_insufficient_funds", "tok_timeout_charged"]):
        await gateway.charge(f"pan-{n}", token)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await gateway.charge("pan-raw", "4242 4242 4242 4242")
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    tables = await gateway.pool.fetch(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()"
    )
    for table in tables:
        rows = await gateway.pool.fetch(f'SELECT row_to_json(t)::text AS row FROM "{table["table_name"]}" t')
        for row in rows:
            assert not contains_card_number(row["row"]), (table["table_name"], row["row"])
    # Our own log lines (libraries log memory addresses, which can pass a Luhn check by chance).
    ours = [r for r in caplog.records if r.name.startswith(("billing", "gateway_adapter"))]
    assert ours
    leaks = [record.getMessage() for record in ours if contains_card_number(record.getMessage())]
    assert not leaks, leaks
    assert await gateway.pool.fetchval("SELECT count(*) FROM payments WHERE idempotency_key = 'pan-raw'") == 0


async def test_get_payment_by_id_or_key(gateway: Gateway) -> None:
    charged = await gateway.charge("get-1")

    by_id = await gateway.stub.GetPayment(pb.GetPaymentRequest(payment_id=charged.payment.payment_id))
    by_key = await gateway.stub.GetPayment(pb.GetPaymentRequest(idempotency_key="get-1"))

    assert by_id.payment == by_key.payment == charged.payment
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await gateway.stub.GetPayment(pb.GetPaymentRequest(idempotency_key="nope"))
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND
