"""A local server that speaks Stripe's wire format for the demo's Stripe customers.

gateway-adapter's Stripe adapter (the official `stripe` client) is pointed at it with
`GATEWAY_STRIPE_API_BASE`. It answers what the adapter asks: creating a confirmed PaymentIntent
(form-encoded, `Idempotency-Key` replayed as Stripe replays it) and searching intents by the
`idempotency_key` metadata. Stripe's test payment methods decide the answer:
`pm_card_chargeDeclinedInsufficientFunds` declines softly, `pm_card_chargeDeclinedStolenCard`
hard, anything else succeeds. `python -m demo.stripe_local --port 12111 --api-key sk_test_...`.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import secrets
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

DECLINES = {
    "pm_card_chargeDeclinedInsufficientFunds": ("insufficient_funds", "Your card has insufficient funds."),
    "pm_card_chargeDeclinedStolenCard": ("stolen_card", "Your card was declined."),
}
SEARCH_QUERY = re.compile(r"metadata\['idempotency_key'\]:'(?P<key>[^']*)'")


@dataclass
class LocalStripe:
    api_key: str
    intents: list[dict[str, Any]] = field(default_factory=list)
    answers: dict[str, tuple[int, dict[str, Any]]] = field(default_factory=dict)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/payment_intents", self.create_intent)
        app.router.add_get("/v1/payment_intents/search", self.search)
        return app

    async def create_intent(self, request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != f"Bearer {self.api_key}":
            error = {"type": "invalid_request_error", "code": "api_key_invalid", "message": "Invalid API Key"}
            return web.json_response({"error": error}, status=401)
        key = request.headers.get("Idempotency-Key", "")
        if key in self.answers:
            status, body = self.answers[key]
            return web.json_response(body, status=status, headers={"Idempotent-Replayed": "true"})
        form = await request.post()
        method = str(form["payment_method"])
        intent: dict[str, Any] = {
            "id": f"pi_{secrets.token_hex(12)}",
            "object": "payment_intent",
            "amount": int(str(form["amount"])),
            "currency": str(form["currency"]),
            "payment_method": method,
            "metadata": {
                name[9:-1]: str(value) for name, value in form.items() if name.startswith("metadata[")
            },
            "status": "succeeded",
            "last_payment_error": None,
        }
        status, body = 200, intent
        if method in DECLINES:
            decline_code, message = DECLINES[method]
            error = {
                "type": "card_error",
                "code": "card_declined",
                "decline_code": decline_code,
                "message": message,
            }
            intent |= {"status": "requires_payment_method", "last_payment_error": error}
            status, body = 402, {"error": error | {"payment_intent": intent}}
        self.intents.append(intent)
        self.answers[key] = (status, body)
        return web.json_response(body, status=status)

    async def search(self, request: web.Request) -> web.Response:
        match = SEARCH_QUERY.fullmatch(request.query.get("query", ""))
        wanted = match["key"] if match else None
        found = [i for i in self.intents if i["metadata"].get("idempotency_key") == wanted]
        return web.json_response(
            {"object": "search_result", "data": found, "has_more": False, "url": "/v1/payment_intents/search"}
        )


async def serve(port: int, api_key: str) -> web.AppRunner:
    runner = web.AppRunner(LocalStripe(api_key).app(), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m demo.stripe_local", description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--api-key", required=True, help="the secret key gateway-adapter presents")
    args = parser.parse_args()

    async def run() -> None:
        await serve(args.port, args.api_key)
        await asyncio.Event().wait()

    asyncio.run(run())


if __name__ == "__main__":
    main()
