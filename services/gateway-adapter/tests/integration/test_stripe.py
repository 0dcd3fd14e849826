"""The Stripe adapter against a local server that speaks Stripe's request and response formats."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest

from billing.common.v1 import common_pb2 as c
from billing.gateway.v1 import gateway_pb2 as pb
from billing_devtools.testing.plugin import EventCollector, InfraEnv, eventually
from billing_devtools.testing.stripe import SLOW, FakeStripe, local_stripe
from gateway_adapter.domain.signatures import sign

from .conftest import gateway_service

pytestmark = pytest.mark.integration
STRIPE = c.PAYMENT_METHOD_TYPE_STRIPE
API_KEY = "sk_test_local_0000000000000000"
WEBHOOK_SECRET = "whsec_stripe_local_0123456789abcdef"
STRIPE_HEADER = "Stripe-Signature"


@pytest.fixture
async def stripe_server() -> AsyncIterator[tuple[FakeStripe, str]]:
    async with local_stripe() as stripe:
        yield stripe.fake, stripe.base


async def test_charge_sends_amount_currency_and_our_idempotency_key(
    env: InfraEnv, stripe_server: tuple[FakeStripe, str]
) -> None:
    fake, base = stripe_server
    async with gateway_service(env, stripe_api_base=base, stripe_api_keys={"default": API_KEY}) as gateway:
        reply = await gateway.charge("stripe-1", "pm_card_visa", 1234, method=STRIPE, currency="EUR")
        again = await gateway.charge("stripe-1", "pm_card_visa", 1234, method=STRIPE, currency="EUR")

    assert reply.payment.status == c.PAYMENT_STATUS_SUCCEEDED and reply.payment.gateway == "stripe"
    assert reply.payment.gateway_reference.startswith("pi_")
    assert again.replayed
    [sent] = fake.requests
    assert sent["key"] == "stripe-1"
    assert sent["auth"] == f"Bearer {API_KEY}"
    form = sent["form"]
    assert (form["amount"], form["currency"], form["payment_method"]) == ("1234", "eur", "pm_card_visa")
    assert (form["confirm"], form["off_session"]) == ("true", "true")
    assert form["metadata[idempotency_key]"] == "stripe-1"


@pytest.mark.parametrize(
    ("token", "code", "kind"),
    [
        ("pm_card_chargeDeclinedInsufficientFunds", "insufficient_funds", c.DECLINE_KIND_SOFT),
        ("pm_card_chargeDeclinedStolenCard", "stolen_card", c.DECLINE_KIND_HARD),
    ],
)
async def test_stripe_declines_are_classified_by_decline_code(
    env: InfraEnv, stripe_server: tuple[FakeStripe, str], token: str, code: str, kind: int
) -> None:
    _, base = stripe_server
    async with gateway_service(env, stripe_api_base=base, stripe_api_keys={"default": API_KEY}) as gateway:
        reply = await gateway.charge(f"stripe-{code}", token, method=STRIPE)

    payment = reply.payment
    assert payment.status == c.PAYMENT_STATUS_DECLINED
    assert (payment.normalized_code, payment.decline_kind, payment.gateway_code) == (code, kind, code)
    assert payment.failure_type == c.FAILURE_TYPE_CARDHOLDER


async def test_refund_goes_to_stripe_with_its_own_key(
    env: InfraEnv, stripe_server: tuple[FakeStripe, str]
) -> None:
    fake, base = stripe_server
    async with gateway_service(env, stripe_api_base=base, stripe_api_keys={"default": API_KEY}) as gateway:
        paid = (await gateway.charge("stripe-r", "pm_card_visa", 3000, method=STRIPE)).payment
        reply = await gateway.stub.Refund(
            pb.RefundRequest(
                payment_id=paid.payment_id,
                amount=c.Money(amount_minor=1000, currency="USD"),
                idempotency_key="stripe-r-refund-1",
            )
        )

    assert reply.payment.status == c.PAYMENT_STATUS_PARTIALLY_REFUNDED
    refund_request = fake.requests[-1]
    assert refund_request["path"] == "/v1/refunds" and refund_request["key"] == "stripe-r-refund-1"
    assert refund_request["form"] == {"payment_intent": paid.gateway_reference, "amount": "1000"}


async def test_no_lock_is_held_on_the_payment_while_stripe_refunds_and_the_refund_is_made_once(
    env: InfraEnv, stripe_server: tuple[FakeStripe, str]
) -> None:
    fake, base = stripe_server
    fake.refunds_answer = asyncio.Event()
    async with gateway_service(env, stripe_api_base=base, stripe_api_keys={"default": API_KEY}) as gateway:
        paid = (await gateway.charge("stripe-slow-r", "pm_card_visa", 3000, method=STRIPE)).payment
        request = pb.RefundRequest(payment_id=paid.payment_id, idempotency_key="stripe-slow-r-refund")
        first = asyncio.ensure_future(gateway.stub.Refund(request))
        await eventually(lambda: any(r["path"] == "/v1/refunds" for r in fake.requests))
        async with gateway.pool.acquire() as conn, conn.transaction():
            # NOWAIT: refused at once if the refund held the payment's row across Stripe's call.
            locked = await conn.fetchval(
                "SELECT payment_id FROM payments WHERE payment_id = $1 FOR UPDATE NOWAIT",
                uuid.UUID(paid.payment_id),
            )
        assert str(locked) == paid.payment_id
        fake.refunds_answer.set()
        reply = await first
        again = await gateway.stub.Refund(request)

    assert reply.payment.status == c.PAYMENT_STATUS_REFUNDED and reply.payment.refunded.amount_minor == 3000
    assert again.replayed and again.refund.refund_id == reply.refund.refund_id
    assert [r["key"] for r in fake.requests if r["path"] == "/v1/refunds"] == ["stripe-slow-r-refund"]


async def test_missing_credentials_are_a_merchant_failure(env: InfraEnv) -> None:
    async with gateway_service(env, stripe_api_keys={}) as gateway:
        reply = await gateway.charge("stripe-nokey", "pm_card_visa", method=STRIPE)

    assert reply.payment.failure_type == c.FAILURE_TYPE_MERCHANT
    assert reply.payment.normalized_code == "invalid_merchant_credentials"


async def test_a_timed_out_charge_is_resolved_by_a_signed_stripe_event(
    env: InfraEnv, stripe_server: tuple[FakeStripe, str]
) -> None:
    fake, base = stripe_server
    async with (
        gateway_service(
            env,
            stripe_api_base=base,
            stripe_api_keys={"default": API_KEY},
            stripe_webhook_secrets=(WEBHOOK_SECRET,),
            stripe_timeout=timedelta(milliseconds=300),
            unknown_check_schedule=(timedelta(hours=1),),
        ) as gateway,
        EventCollector(env.infra.amqp_url, env.exchange, ["payment.reconciled"]) as events,
    ):
        unknown = (await gateway.charge("stripe-slow", SLOW, method=STRIPE)).payment
        assert unknown.status == c.PAYMENT_STATUS_UNKNOWN
        [intent] = fake.intents.values()
        event = {
            "id": "evt_slow_1",
            "object": "event",
            "type": "payment_intent.succeeded",
            "data": {"object": intent},
        }
        body = json.dumps(event).encode()
        now = datetime.now(UTC)
        refused = await gateway.post(
            "stripe", body, sign(body, "whsec_other_0000000000000000", now), STRIPE_HEADER
        )
        assert refused[0] == 400
        accepted = await gateway.post("stripe", body, sign(body, WEBHOOK_SECRET, now), STRIPE_HEADER)
        assert accepted == (200, {"received": True, "applied": True})

        [reconciled] = await events.wait_for("payment.reconciled")
        after = await gateway.stub.GetPayment(pb.GetPaymentRequest(payment_id=unknown.payment_id))
    assert reconciled.previous_status == c.PAYMENT_STATUS_UNKNOWN
    assert after.payment.status == c.PAYMENT_STATUS_SUCCEEDED
    assert after.payment.gateway_reference == intent["id"]
    assert len([r for r in fake.requests if r["path"] == "/v1/payment_intents"]) == 1


async def test_the_janitor_finds_a_timed_out_stripe_charge_by_searching_its_key(
    env: InfraEnv, stripe_server: tuple[FakeStripe, str]
) -> None:
    fake, base = stripe_server
    async with gateway_service(
        env,
        stripe_api_base=base,
        stripe_api_keys={"default": API_KEY},
        stripe_timeout=timedelta(milliseconds=300),
        unknown_check_schedule=(timedelta(milliseconds=200),),
    ) as gateway:
        unknown = (await gateway.charge("stripe-slow-2", SLOW, method=STRIPE)).payment
        assert unknown.status == c.PAYMENT_STATUS_UNKNOWN

        async def resolved() -> bool:
            reply = await gateway.stub.GetPayment(pb.GetPaymentRequest(payment_id=unknown.payment_id))
            return bool(reply.payment.status == c.PAYMENT_STATUS_SUCCEEDED)

        await eventually(resolved)
    searches = [r for r in fake.requests if r["path"] == "/v1/payment_intents/search"]
    assert searches and searches[0]["query"] == "metadata['idempotency_key']:'stripe-slow-2'"
