"""Circuit breaker, unknown outcomes, ACH notices, webhooks and refunds, end to end."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta

import grpc
import pytest

from billing.common.v1 import common_pb2 as c
from billing.gateway.v1 import gateway_pb2 as pb
from billing_devtools.testing.plugin import EventCollector, InfraEnv, eventually
from gateway_adapter.domain.signatures import sign

from .conftest import SANDBOX_SECRET, Gateway, gateway_service

pytestmark = pytest.mark.integration
ACH = c.PAYMENT_METHOD_TYPE_ACH


@pytest.fixture
async def gateway(env: InfraEnv) -> Gateway:
    async with gateway_service(env) as running:
        yield running  # type: ignore[misc]


async def circuit(gateway: Gateway, merchant: str) -> pb.GetCircuitStateResponse:
    reply: pb.GetCircuitStateResponse = await gateway.stub.GetCircuitState(
        pb.GetCircuitStateRequest(merchant_id=merchant, gateway="sandbox-card")
    )
    return reply


async def test_breaker_opens_after_exactly_five_unreachable_for_one_merchant_only(gateway: Gateway) -> None:
    for n in range(4):
        await gateway.charge(f"down-{n}", "tok_gateway_unreachable")
    assert (await circuit(gateway, "merchant-a")).state == pb.CIRCUIT_STATE_CLOSED

    await gateway.charge("down-4", "tok_gateway_unreachable")
    opened = await circuit(gateway, "merchant-a")
    assert opened.state == pb.CIRCUIT_STATE_OPEN and opened.consecutive_failures == 5
    assert opened.HasField("opened_at")

    short_circuited = await gateway.charge("while-open", "tok_success")
    assert short_circuited.payment.status == c.PAYMENT_STATUS_FAILED
    assert short_circuited.payment.failure_type == c.FAILURE_TYPE_GATEWAY_UNREACHABLE
    assert short_circuited.payment.retryable and short_circuited.payment.normalized_code == "circuit_open"
    assert await gateway.gateway_calls(merchant="merchant-a") == 0

    other = await gateway.charge("other-merchant", "tok_success", merchant="merchant-b")
    assert other.payment.status == c.PAYMENT_STATUS_SUCCEEDED
    assert (await circuit(gateway, "merchant-b")).state == pb.CIRCUIT_STATE_CLOSED

    # After the reset timeout one probe decides; a success closes the circuit.
    probe = await eventually(lambda: _succeeds(gateway, "while-open"), timeout=5, interval=0.2)
    assert probe.payment.payment_id == short_circuited.payment.payment_id
    assert (await circuit(gateway, "merchant-a")).state == pb.CIRCUIT_STATE_CLOSED


async def _succeeds(gateway: Gateway, key: str) -> pb.ChargeResponse | None:
    reply = await gateway.charge(key, "tok_success")
    return reply if reply.payment.status == c.PAYMENT_STATUS_SUCCEEDED else None


async def test_declines_never_count_towards_the_breaker(gateway: Gateway) -> None:
    for n in range(4):
        await gateway.charge(f"down-{n}", "tok_gateway_unreachable")
    await gateway.charge("declined", "tok_stolen_card")
    for n in range(4):
        await gateway.charge(f"down-again-{n}", "tok_gateway_unreachable")

    state = await circuit(gateway, "merchant-a")
    assert state.state == pb.CIRCUIT_STATE_CLOSED and state.consecutive_failures == 4


async def test_unknown_outcome_is_never_charged_again_and_the_janitor_resolves_it(env: InfraEnv) -> None:
    schedule = (timedelta(milliseconds=400), timedelta(hours=1))
    async with (
        gateway_service(env, unknown_check_schedule=schedule) as gateway,
        EventCollector(env.infra.amqp_url, env.exchange, ["payment.*"]) as events,
    ):
        first = await gateway.charge("timeout-1", "tok_timeout_charged", reference="inv-t")
        assert first.payment.status == c.PAYMENT_STATUS_UNKNOWN
        again = await gateway.charge("timeout-1", "tok_timeout_charged", reference="inv-t")
        assert again.replayed and again.payment.status == c.PAYMENT_STATUS_UNKNOWN
        assert await gateway.gateway_calls("timeout-1") == 1

        [reconciled] = await events.wait_for("payment.reconciled")
        assert reconciled.previous_status == c.PAYMENT_STATUS_UNKNOWN
        assert reconciled.payment.status == c.PAYMENT_STATUS_SUCCEEDED
        assert reconciled.payment.caller_reference == "inv-t"
        resolved = await gateway.stub.GetPayment(pb.GetPaymentRequest(idempotency_key="timeout-1"))
        assert resolved.payment.status == c.PAYMENT_STATUS_SUCCEEDED
        assert await gateway.gateway_calls("timeout-1") == 1
        assert events.of_type("payment.succeeded") == []


@pytest.mark.parametrize(
    ("token", "event_type", "final"),
    [
        ("ach_settles", "payment.settled", c.PAYMENT_STATUS_SETTLED),
        ("ach_returns_r01", "payment.returned", c.PAYMENT_STATUS_RETURNED),
    ],
)
async def test_ach_is_pending_then_settles_or_returns_by_signed_notice(
    env: InfraEnv, token: str, event_type: str, final: int
) -> None:
    async with (
        gateway_service(env, sandbox_ach_clears_after=timedelta(milliseconds=300)) as gateway,
        EventCollector(env.infra.amqp_url, env.exchange, ["payment.*"]) as events,
    ):
        pending = await gateway.charge(f"ach-{token}", token, method=ACH, reference="inv-ach")
        assert pending.payment.status == c.PAYMENT_STATUS_PENDING and pending.payment.gateway == "sandbox-ach"
        await events.wait_for("payment.pending")

        [notice] = await events.wait_for(event_type)
        payment = await gateway.stub.GetPayment(pb.GetPaymentRequest(payment_id=pending.payment.payment_id))
        assert payment.payment.status == final
        assert notice.payment.caller_reference == "inv-ach"
        if final == c.PAYMENT_STATUS_RETURNED:
            assert notice.return_code == "R01"
            assert payment.payment.failure_type == c.FAILURE_TYPE_CARDHOLDER
            assert payment.payment.decline_kind == c.DECLINE_KIND_SOFT
            assert payment.payment.normalized_code == "insufficient_funds"


def _notice(event_id: str, charge_id: str) -> bytes:
    return json.dumps({"id": event_id, "type": "ach.settled", "data": {"charge_id": charge_id}}).encode()


async def test_webhook_signatures_are_checked_and_event_ids_applied_once(env: InfraEnv) -> None:
    old_secret = "whsec_sandbox_previous_fedcba9876543210"
    async with gateway_service(
        env, sandbox_webhook_secrets=(SANDBOX_SECRET, old_secret), sandbox_ach_clears_after=timedelta(days=1)
    ) as gateway:
        pending = await gateway.charge("ach-hook", "ach_settles", method=ACH)
        charge_id = pending.payment.gateway_reference
        now = datetime.now(UTC)
        body = _notice("evt_1", charge_id)

        forged = await gateway.post(
            "sandbox", body, sign(body, "whsec_wrong_secret_000000000000", now), "Sandbox-Signature"
        )
        stale = await gateway.post(
            "sandbox", body, sign(body, SANDBOX_SECRET, now - timedelta(seconds=301)), "Sandbox-Signature"
        )
        unsigned = await gateway.post("sandbox", body, "", "Sandbox-Signature")
        assert [forged[0], stale[0], unsigned[0]] == [400, 400, 400]
        unchanged = await gateway.stub.GetPayment(pb.GetPaymentRequest(payment_id=pending.payment.payment_id))
        assert unchanged.payment.status == c.PAYMENT_STATUS_PENDING

        # Signed with the secret being rotated out: still accepted.
        accepted = await gateway.post("sandbox", body, sign(body, old_secret, now), "Sandbox-Signature")
        repeated = await gateway.post("sandbox", body, sign(body, SANDBOX_SECRET, now), "Sandbox-Signature")
        assert accepted == (200, {"received": True, "applied": True})
        assert repeated == (200, {"received": True, "applied": False})
        settled = await gateway.stub.GetPayment(pb.GetPaymentRequest(payment_id=pending.payment.payment_id))
        assert settled.payment.status == c.PAYMENT_STATUS_SETTLED
        assert (
            await gateway.pool.fetchval("SELECT count(*) FROM outbox WHERE event_type = 'payment.settled'")
            == 1
        )


async def refund(gateway: Gateway, payment_id: str, key: str, amount: int | None = None) -> pb.RefundResponse:
    request = pb.RefundRequest(payment_id=payment_id, idempotency_key=key)
    if amount is not None:
        request.amount.CopyFrom(c.Money(amount_minor=amount, currency="USD"))
    reply: pb.RefundResponse = await gateway.stub.Refund(request)
    return reply


async def test_refunds_partial_then_full_and_never_more_than_is_left(env: InfraEnv, gateway: Gateway) -> None:
    paid = (await gateway.charge("refund-me", amount=5000)).payment

    async with EventCollector(env.infra.amqp_url, env.exchange, ["payment.refunded"]) as events:
        part = await refund(gateway, paid.payment_id, "r-1", 1500)
        assert part.refund.amount.amount_minor == 1500
        assert part.payment.status == c.PAYMENT_STATUS_PARTIALLY_REFUNDED
        assert part.payment.refunded.amount_minor == 1500

        with pytest.raises(grpc.aio.AioRpcError) as over:
            await refund(gateway, paid.payment_id, "r-2", 3501)
        assert over.value.code() == grpc.StatusCode.FAILED_PRECONDITION

        replay = await refund(gateway, paid.payment_id, "r-1", 1500)
        assert replay.replayed and replay.refund.refund_id == part.refund.refund_id

        rest = await refund(gateway, paid.payment_id, "r-3")
        assert rest.refund.amount.amount_minor == 3500
        assert rest.payment.status == c.PAYMENT_STATUS_REFUNDED

        refunded = await events.wait_for("payment.refunded", count=2)
    assert [e.refunded_total.amount_minor for e in refunded] == [1500, 5000]
    assert await gateway.pool.fetchval("SELECT count(*) FROM sandbox_refunds") == 2
    with pytest.raises(grpc.aio.AioRpcError) as nothing_left:
        await refund(gateway, paid.payment_id, "r-4", 1)
    assert nothing_left.value.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_a_declined_payment_cannot_be_refunded(gateway: Gateway) -> None:
    declined = (await gateway.charge("declined-refund", "tok_do_not_honor")).payment

    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await refund(gateway, declined.payment_id, "r-declined")

    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert await gateway.pool.fetchval("SELECT count(*) FROM refunds") == 0


async def test_rate_limited_sandbox_answers_retryable_failures_beyond_its_limit(env: InfraEnv) -> None:
    async with gateway_service(env, sandbox_rate_limit=5) as gateway:
        started = time.monotonic()
        replies = [await gateway.charge(f"rl-{n}") for n in range(8)]
        elapsed = time.monotonic() - started

    limited = [r.payment for r in replies if r.payment.normalized_code == "rate_limited"]
    accepted = [r.payment for r in replies if r.payment.status == c.PAYMENT_STATUS_SUCCEEDED]
    assert len(accepted) <= 5 + int(elapsed * 5)
    assert limited and all(
        p.retryable and p.failure_type == c.FAILURE_TYPE_GATEWAY_UNREACHABLE for p in limited
    )
