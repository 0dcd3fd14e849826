"""Stripe through its official SDK: PaymentIntents confirmed off-session, refunds, webhook events.

Our idempotency key travels as Stripe's Idempotency-Key header, so Stripe itself also refuses to
charge twice, and is copied into the PaymentIntent's metadata, which is how the janitor finds the
outcome of a call that timed out (PaymentIntent search by metadata).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import aiohttp
import stripe

from gateway_adapter.app.notices import Notice, NoticeKind
from gateway_adapter.app.ports import (
    GatewayCharge,
    GatewayRefund,
    GatewayReply,
    GatewayTimeout,
    GatewayUnreachable,
)

SIGNATURE_HEADER = "Stripe-Signature"
# PaymentIntent states that are not final: the money moves later (bank debits, async methods).
PENDING_STATES = frozenset({"processing", "requires_capture"})


class StripeGateway:
    name = "stripe"

    def __init__(self, api_base: str, api_keys: Mapping[str, str], timeout_seconds: float) -> None:
        self._api_base = api_base
        self._api_keys = dict(api_keys)
        self._timeout = timeout_seconds
        self._clients: dict[str, stripe.StripeClient] = {}

    def _client(self, credentials_ref: str) -> stripe.StripeClient | None:
        key = self._api_keys.get(credentials_ref)
        if key is None:
            return None
        if credentials_ref not in self._clients:
            self._clients[credentials_ref] = stripe.StripeClient(
                key,
                base_addresses={"api": self._api_base},
                http_client=stripe.AIOHTTPClient(timeout=self._timeout),
                max_network_retries=0,
            )
        return self._clients[credentials_ref]

    async def charge(self, call: GatewayCharge) -> GatewayReply:
        client = self._client(call.credentials_ref)
        if client is None:
            return GatewayReply(
                "authentication_error", f"no API key for credentials {call.credentials_ref!r}"
            )
        params: Any = {
            "amount": call.amount.amount_minor,
            "currency": call.amount.currency.lower(),
            "payment_method": call.token,
            "confirm": True,
            "off_session": True,
            "metadata": {
                **call.metadata,
                "idempotency_key": call.idempotency_key,
                "payment_id": call.payment_id,
            },
        }
        try:
            intent = await client.v1.payment_intents.create_async(
                params, options={"idempotency_key": call.idempotency_key}
            )
        except stripe.StripeError as error:
            return _reply_for(error)
        return _reply_for_intent(intent.to_dict())

    async def refund(self, call: GatewayRefund) -> GatewayReply:
        client = self._client(call.credentials_ref)
        if client is None:
            return GatewayReply(
                "authentication_error", f"no API key for credentials {call.credentials_ref!r}"
            )
        params: Any = {"payment_intent": call.gateway_reference, "amount": call.amount.amount_minor}
        try:
            refund = await client.v1.refunds.create_async(
                params, options={"idempotency_key": call.idempotency_key}
            )
        except stripe.StripeError as error:
            return _reply_for(error)
        return GatewayReply("succeeded", str(refund.status or ""), str(refund.id))

    async def find(self, merchant_id: str, idempotency_key: str, credentials_ref: str) -> GatewayReply | None:
        client = self._client(credentials_ref)
        if client is None:
            raise GatewayUnreachable(f"no API key for credentials {credentials_ref!r}")
        params: Any = {"query": f"metadata['idempotency_key']:'{idempotency_key}'", "limit": 1}
        try:
            found = await client.v1.payment_intents.search_async(params)
        except stripe.StripeError as error:
            _raise_unavailable(error)
            raise GatewayUnreachable(f"lookup refused: {error}") from error
        return _reply_for_intent(found.data[0].to_dict()) if found.data else None


def _reply_for_intent(intent: dict[str, Any]) -> GatewayReply:
    status = str(intent.get("status", ""))
    if status == "succeeded":
        return GatewayReply("succeeded", "Payment succeeded", str(intent["id"]))
    if status in PENDING_STATES:
        return GatewayReply("succeeded", f"PaymentIntent {status}", str(intent["id"]), pending=True)
    error = intent.get("last_payment_error") or {}
    code = error.get("decline_code") or error.get("code") or status
    return GatewayReply(str(code), str(error.get("message", "")), str(intent["id"]))


def _raise_unavailable(error: stripe.StripeError) -> None:
    """Turn transport failures into the port's exceptions; anything else is an answer from Stripe."""
    if isinstance(error, stripe.APIConnectionError):
        cause = error.__cause__ or error.__context__
        if isinstance(cause, aiohttp.ClientConnectorError):
            raise GatewayUnreachable(str(error)) from error
        raise GatewayTimeout(str(error)) from error
    if isinstance(error, stripe.APIError) and (error.http_status or 500) >= 500:
        # Stripe may have acted on it; with the idempotency key a later lookup tells.
        raise GatewayTimeout(str(error)) from error


def _reply_for(error: stripe.StripeError) -> GatewayReply:
    _raise_unavailable(error)
    if isinstance(error, stripe.AuthenticationError):
        return GatewayReply("authentication_error", str(error.user_message or error))
    if isinstance(error, stripe.RateLimitError):
        return GatewayReply("rate_limit", str(error.user_message or error))
    body: Any = error.json_body or {}
    details = body.get("error", {})
    code = details.get("decline_code") or details.get("code") or "generic_decline"
    intent = details.get("payment_intent") or {}
    return GatewayReply(str(code), str(details.get("message", "")), str(intent.get("id", "")))


def parse_stripe_event(body: bytes) -> Notice | None:
    """A verified Stripe event in our terms; None for event types we do not act on."""
    event = json.loads(body)
    kinds = {
        "payment_intent.succeeded": NoticeKind.SUCCEEDED,
        "payment_intent.payment_failed": NoticeKind.DECLINED,
    }
    kind = kinds.get(event.get("type", ""))
    if kind is None:
        return None
    intent = event.get("data", {}).get("object", {})
    error = intent.get("last_payment_error") or {}
    return Notice(
        source="stripe",
        event_id=str(event["id"]),
        kind=kind,
        gateway=StripeGateway.name,
        gateway_reference=str(intent.get("id", "")),
        idempotency_key=str(intent.get("metadata", {}).get("idempotency_key", "")),
        code=str(error.get("decline_code") or error.get("code") or ""),
        message=str(error.get("message", "")),
    )
