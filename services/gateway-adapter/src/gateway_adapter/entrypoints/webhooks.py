"""The HTTP endpoint gateways notify: verify the signature first, then apply the notice once."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from aiohttp import web
from opentelemetry.trace import SpanKind

from billing_common import telemetry
from billing_common.clock import Clock
from gateway_adapter.adapters.sandbox import SIGNATURE_HEADER as SANDBOX_HEADER
from gateway_adapter.adapters.sandbox import parse_sandbox_notice
from gateway_adapter.adapters.stripe_gateway import SIGNATURE_HEADER as STRIPE_HEADER
from gateway_adapter.adapters.stripe_gateway import parse_stripe_event
from gateway_adapter.app.notices import Notice, Notices
from gateway_adapter.domain.signatures import SignatureError, verify

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WebhookSource:
    name: str
    header: str
    secrets: Sequence[str]
    parse: Callable[[bytes], Notice | None]


def webhook_app(
    notices: Notices, clock: Clock, stripe_secrets: Sequence[str], sandbox_secrets: Sequence[str]
) -> web.Application:
    sources = [
        WebhookSource("stripe", STRIPE_HEADER, stripe_secrets, parse_stripe_event),
        WebhookSource(
            "sandbox", SANDBOX_HEADER, sandbox_secrets, lambda body: parse_sandbox_notice(body, "sandbox-ach")
        ),
    ]
    app = web.Application(client_max_size=1024 * 1024)
    for source in sources:
        app.router.add_post(f"/webhooks/{source.name}", _handler(source, notices, clock))
    return app


def _handler(
    source: WebhookSource, notices: Notices, clock: Clock
) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def handle(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        try:
            verify(body, request.headers.get(source.header, ""), source.secrets, clock.now())
        except SignatureError as error:
            notices.not_applied(source.name, "bad_signature")
            log.warning("webhook refused", extra={"source": source.name, "reason": str(error)})
            return web.json_response({"error": str(error)}, status=400)
        try:
            notice = source.parse(body)
        except (ValueError, KeyError) as error:
            notices.not_applied(source.name, "malformed")
            return web.json_response({"error": f"malformed notice: {error}"}, status=400)
        if notice is None:
            notices.not_applied(source.name, "ignored")
            return web.json_response({"received": True, "applied": False})
        # A notice starts its own trace, linked to the charge of the payment it is about.
        with telemetry.span(
            f"webhook {source.name}", kind=SpanKind.SERVER, attributes={"webhook.event_id": notice.event_id}
        ):
            applied = await notices.apply(notice)
        return web.json_response({"received": True, "applied": applied})

    return handle
