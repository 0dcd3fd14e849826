"""The Stripe adapter against a local server that speaks Stripe's request and response formats."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiohttp import web

from billing.common.v1 import common_pb2 as c
from billing.gateway.v1 import gateway_pb2 as pb
from billing_common.testing.plugin import EventCollector, InfraEnv, eventually
from billing_common.testing.processes import free_port
from gateway_adapter.domain.signatures import sign

from .conftest import gateway_service

pytestmark = pytest.mark.integration
STRIPE = c.PAYMENT_METHOD_TYPE_STRIPE
API_KEY = "sk_test_local_0000000000000000"
WEBHOOK_SECRET = "whsec_stripe_local_0123456789abcdef"
STRIPE_HEADER = "Stripe-Signature"
SLOW = "pm_card_slow_answer"
# Stripe's test PaymentMethods and the errors Stripe answers for them.
DECLINES = {
    "pm_card_chargeDeclinedInsufficientFunds": (
        "card_declined",
        "insufficient_funds",
        "Your card has insufficient funds.",
    ),
    "pm_card_chargeDeclinedStolenCard": ("card_declined", "stolen_card", "Your card was declined."),
}


@dataclass
class FakeStripe:
    """Stripe's /v1/payment_intents, /v1/payment_intents/search and /v1/refunds, with idempotent replays."""

    requests: list[dict[str, Any]] = field(default_factory=list)
    intents: dict[str, dict[str, Any]] = field(default_factory=dict)
    replies: dict[str, tuple[int, dict[str, Any]]] = field(default_factory=dict)
    # When given, refunds are answered only once it is set (a slow Stripe).
    refunds_answer: asyncio.Event | None = None

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/payment_intents", self.create_intent)
        app.router.add_get("/v1/payment_intents/search", self.search)
        app.router.add_post("/v1/refunds", self.create_refund)
        return app

    async def _record(self, request: web.Request) -> tuple[dict[str, str], str]:
        form = dict((await request.post()).items())
        key = request.headers.get("Idempotency-Key", "")
        self.requests.append(
            {"path": request.path, "form": form, "key": key, "auth": request.headers.get("Authorization")}
        )
        return {k: str(v) for k, v in form.items()}, key

    async def create_intent(self, request: web.Request) -> web.Response:
        form, key = await self._record(request)
        if key in self.replies:
            status, body = self.replies[key]
            return web.json_response(body, status=status, headers={"Idempotent-Replayed": "true"})
        intent = {
            "id": f"pi_{uuid.uuid4().hex[:24]}",
            "object": "payment_intent",
            "amount": int(form["amount"]),
            "currency": form["currency"],
            "payment_method": form["payment_method"],
            "metadata": {k[9:-1]: v for k, v in form.items() if k.startswith("metadata[")},
            "status": "succeeded",
            "last_payment_error": None,
        }
        status, body = 200, intent
        if form["payment_method"] == SLOW:  # the intent succeeds, but the answer comes too late
            self.intents[intent["id"]] = intent
            await asyncio.sleep(1)
        if form["payment_method"] in DECLINES:
            code, decline_code, message = DECLINES[form["payment_method"]]
            error = {"type": "card_error", "code": code, "decline_code": decline_code, "message": message}
            intent |= {"status": "requires_payment_method", "last_payment_error": error}
            status, body = 402, {"error": error | {"payment_intent": intent}}
        self.intents[intent["id"]] = intent
        self.replies[key] = (status, body)
        return web.json_response(body, status=status)

    async def search(self, request: web.Request) -> web.Response:
        self.requests.append({"path": request.path, "query": request.query.get("query", ""), "key": ""})
        wanted = request.query.get("query", "").split(":'", 1)[-1].rstrip("'")
        found = [i for i in self.intents.values() if i["metadata"].get("idempotency_key") == wanted]
        return web.json_response(
            {"object": "search_result", "data": found, "has_more": False, "url": "/v1/payment_intents/search"}
        )

    async def create_refund(self, request: web.Request) -> web.Response:
        form, _ = await self._record(request)
        if self.refunds_answer is not None:
            await self.refunds_answer.wait()
        refund = {
            "id": f"re_{uuid.uuid4().hex[:24]}",
            "object": "refund",
            "amount": int(form["amount"]),
            "payment_intent": form["payment_intent"],
            "status": "succeeded",
        }
        return web.json_response(refund)


@pytest.fixture
async def stripe_server() -> AsyncIterator[tuple[FakeStripe, str]]:
    fake = FakeStripe()
    runner = web.AppRunner(fake.app())
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield fake, f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


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
