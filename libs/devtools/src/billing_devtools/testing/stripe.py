"""A local server that speaks Stripe's request and response formats, for tests of the Stripe
gateway and of what routes a merchant to it: it can be stopped and started again on its address,
as an unreachable Stripe would be."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from billing_devtools.testing.processes import free_port

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
        arrived = time.monotonic()
        form = dict((await request.post()).items())
        key = request.headers.get("Idempotency-Key", "")
        self.requests.append(
            {
                "path": request.path,
                "form": form,
                "key": key,
                "auth": request.headers.get("Authorization"),
                "at": arrived,
            }
        )
        return {k: str(v) for k, v in form.items()}, key

    async def create_intent(self, request: web.Request) -> web.Response:
        form, key = await self._record(request)
        if key in self.replies:
            status, body = self.replies[key]
            return web.json_response(body, status=status, headers={"Idempotent-Replayed": "true"})
        intent: dict[str, Any] = {
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


class LocalStripe:
    """A FakeStripe served on one loopback port, which `stop` closes and `start` opens again."""

    def __init__(self) -> None:
        self.fake = FakeStripe()
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        self._runner = web.AppRunner(self.fake.app())
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def busiest_second(self) -> int:
        """The most charges that arrived within any one second."""
        arrivals = sorted(r["at"] for r in self.fake.requests if r["path"] == "/v1/payment_intents")
        return max(
            (sum(1 for later in arrivals[i:] if later - first < 1) for i, first in enumerate(arrivals)),
            default=0,
        )


@contextlib.asynccontextmanager
async def local_stripe() -> AsyncIterator[LocalStripe]:
    stripe = LocalStripe()
    await stripe.start()
    try:
        yield stripe
    finally:
        await stripe.stop()
