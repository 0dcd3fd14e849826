"""The sandbox gateway: a real gateway of our own whose behaviour is chosen by the test token.

Like the test cards of the big processors, the token decides the outcome. Unlike a mock, it keeps
its own ledger (`sandbox_charges`) of every request that reached it, so tests count gateway-side
charges per idempotency key, and its ACH debits clear later through signed webhook notices.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import aiohttp
import asyncpg

from billing_common.clock import Clock
from billing_common.db import connection, transaction
from billing_common.grouping import GroupCommit
from billing_common.suite_clock import pause
from gateway_adapter.app.notices import Notice, NoticeKind
from gateway_adapter.app.ports import (
    GatewayCharge,
    GatewayRefund,
    GatewayReply,
    GatewayTimeout,
    GatewayUnreachable,
)
from gateway_adapter.domain.signatures import sign

SIGNATURE_HEADER = "Sandbox-Signature"
FLAKY = "tok_flaky_"
# A card charge that spends this long on its way to the gateway (a stalled network path): until it
# arrives the gateway has never heard of it, while its look-ups answer at once.
SLOW_ARRIVAL_TOKEN = "tok_slow_arrival"
SLOW_ARRIVAL = timedelta(seconds=2)
# Card tokens whose answer is a decline, by the sandbox's own code.
DECLINES: Mapping[str, tuple[str, str]] = {
    "tok_insufficient_funds": ("insufficient_funds", "Insufficient funds"),
    "tok_do_not_honor": ("do_not_honor", "Do not honor"),
    "tok_expired_card": ("expired_card", "Expired card"),
    "tok_stolen_card": ("stolen_card", "Pick up card (stolen)"),
    "tok_lost_card": ("lost_card", "Pick up card (lost)"),
    "tok_merchant_invalid_credentials": ("invalid_merchant_credentials", "Invalid merchant credentials"),
}
# ACH tokens: the debit is pending, then settles or is returned with this NACHA code.
ACH_RETURNS: Mapping[str, str] = {"ach_returns_r01": "R01", "ach_returns_r02": "R02"}


class TokenBucket:
    """Requests per second the gateway accepts, with a burst of one second's worth."""

    def __init__(self, per_second: int) -> None:
        self._rate = per_second
        self._tokens = float(per_second)
        self._last = time.monotonic()

    def take(self) -> bool:
        if self._rate <= 0:
            return True
        now = time.monotonic()
        self._tokens = min(float(self._rate), self._tokens + (now - self._last) * self._rate)
        self._last = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True


@dataclass(frozen=True)
class SandboxBehaviour:
    latency: timedelta = timedelta(0)
    rate_limit: int = 0
    ach_clears_after: timedelta = timedelta(seconds=30)


class SandboxGateway:
    def __init__(self, name: str, pool: asyncpg.Pool, clock: Clock, behaviour: SandboxBehaviour) -> None:
        self.name = name
        self._pool = pool
        self._clock = clock
        self._behaviour = behaviour
        self._bucket = TokenBucket(behaviour.rate_limit)
        # Its own ledger, written as a busy gateway would: concurrent charges in one statement.
        self._ledger: GroupCommit[tuple[Any, ...], None] = GroupCommit(self._write_charges)

    async def _write_charges(self, charges: list[tuple[Any, ...]]) -> list[None]:
        columns = list(zip(*charges, strict=True))
        async with connection(self._pool) as conn:
            await conn.execute(
                """
                INSERT INTO sandbox_charges (charge_id, idempotency_key, merchant_id, gateway, token,
                    amount_minor, currency, outcome, created_at, clears_at)
                SELECT c.charge_id, c.key, c.merchant_id, $10, c.token, c.amount_minor, c.currency,
                    c.outcome, c.created_at, c.clears_at
                FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::bigint[], $6::text[],
                    $7::text[], $8::timestamptz[], $9::timestamptz[])
                    AS c(charge_id, key, merchant_id, token, amount_minor, currency, outcome, created_at,
                        clears_at)
                """,
                *columns,
                self.name,
            )
        return [None] * len(charges)

    async def _arrive(self) -> None:
        if self._behaviour.latency:
            await asyncio.sleep(self._behaviour.latency.total_seconds())

    async def charge(self, call: GatewayCharge) -> GatewayReply:
        if call.token == "tok_gateway_unreachable":
            await self._arrive()
            raise GatewayUnreachable("597 gateway unreachable")
        if call.token == SLOW_ARRIVAL_TOKEN:
            await asyncio.sleep(SLOW_ARRIVAL.total_seconds())
        # Stamped and counted on arrival, as a gateway's rate limit counts requests as they come in.
        now = self._clock.now()
        accepted = self._bucket.take()
        await self._arrive()
        if not accepted:
            return GatewayReply("429", "Too many requests")
        code, message, pending = await self._decide(call.token)
        charge_id = f"sbx_{uuid.uuid4().hex}"
        clears_at = now + self._behaviour.ach_clears_after if pending else None
        await self._ledger.submit(
            [
                (
                    charge_id,
                    call.idempotency_key,
                    call.merchant_id,
                    call.token,
                    call.amount.amount_minor,
                    call.amount.currency,
                    "pending" if pending else code,
                    now,
                    clears_at,
                )
            ]
        )
        if call.token == "tok_timeout_charged":
            raise GatewayTimeout("no answer within the deadline")
        return GatewayReply(code, message, charge_id, pending=pending)

    async def _decide(self, token: str) -> tuple[str, str, bool]:
        if token in DECLINES:
            return (*DECLINES[token], False)
        suffix = token.removeprefix(FLAKY)
        # Only `tok_flaky_<digits>` is flaky; any other suffix is a token like any other.
        if token.startswith(FLAKY) and (suffix == "" or (suffix.isascii() and suffix.isdigit())):
            declines = int(suffix or 0)
            if await self._uses(token) <= declines:
                return "do_not_honor", "Do not honor", False
        if token == "ach_settles" or token in ACH_RETURNS:
            return "approved", "Debit accepted, clearing", True
        return "approved", "Approved", False

    async def _uses(self, token: str) -> int:
        async with connection(self._pool) as conn:
            uses: int = await conn.fetchval(
                """
                INSERT INTO sandbox_token_uses (token, uses) VALUES ($1, 1)
                ON CONFLICT (token) DO UPDATE SET uses = sandbox_token_uses.uses + 1
                RETURNING uses
                """,
                token,
            )
        return uses

    async def refund(self, call: GatewayRefund) -> GatewayReply:
        await self._arrive()
        async with transaction(self._pool) as conn:
            existing = await conn.fetchval(
                "SELECT refund_id FROM sandbox_refunds WHERE idempotency_key = $1", call.idempotency_key
            )
            if existing is not None:
                return GatewayReply("approved", "Refunded", existing)
            refund_id = f"sbx_re_{uuid.uuid4().hex}"
            await conn.execute(
                """
                INSERT INTO sandbox_refunds (refund_id, idempotency_key, charge_id, amount_minor, created_at)
                VALUES ($1, $2, $3, $4, $5)
                """,
                refund_id,
                call.idempotency_key,
                call.gateway_reference,
                call.amount.amount_minor,
                self._clock.now(),
            )
        return GatewayReply("approved", "Refunded", refund_id)

    async def find(self, merchant_id: str, idempotency_key: str, credentials_ref: str) -> GatewayReply | None:
        await self._arrive()
        async with connection(self._pool) as conn:
            row = await conn.fetchrow(
                """
                SELECT charge_id, outcome FROM sandbox_charges
                WHERE idempotency_key = $1 AND merchant_id = $2 AND gateway = $3
                ORDER BY created_at DESC LIMIT 1
                """,
                idempotency_key,
                merchant_id,
                self.name,
            )
        if row is None:
            return None
        pending = row["outcome"] == "pending"
        return GatewayReply("approved" if pending else row["outcome"], "", row["charge_id"], pending=pending)


class SandboxClearing:
    """The sandbox's bank side: once an ACH debit is due, it notifies the webhook, signed."""

    def __init__(
        self, pool: asyncpg.Pool, clock: Clock, notice_url: str, secret: str, interval: timedelta
    ) -> None:
        self._pool = pool
        self._clock = clock
        self._url = notice_url
        self._secret = secret
        self._interval = interval

    async def run_forever(self) -> None:
        async with aiohttp.ClientSession() as session:
            while True:
                await self.clear_due(session)
                await pause(self._clock, self._interval.total_seconds())

    async def clear_due(self, session: aiohttp.ClientSession) -> int:
        async with connection(self._pool) as conn:
            due = await conn.fetch(
                """
                SELECT charge_id, idempotency_key, token FROM sandbox_charges
                WHERE NOT cleared AND clears_at <= $1 ORDER BY clears_at LIMIT 100
                """,
                self._clock.now(),
            )
        for row in due:
            returned = ACH_RETURNS.get(row["token"])
            notice = {
                "id": f"evt_{row['charge_id']}",
                "type": "ach.returned" if returned else "ach.settled",
                "created": int(self._clock.now().timestamp()),
                "data": {"charge_id": row["charge_id"], "idempotency_key": row["idempotency_key"]}
                | ({"return_code": returned} if returned else {}),
            }
            body = json.dumps(notice).encode()
            headers = {
                SIGNATURE_HEADER: sign(body, self._secret, self._clock.now()),
                "Content-Type": "application/json",
            }
            async with session.post(self._url, data=body, headers=headers) as response:
                if response.status != 200:
                    continue  # the next round tries again, as a real gateway retries its webhooks
            async with connection(self._pool) as conn:
                await conn.execute(
                    "UPDATE sandbox_charges SET cleared = true WHERE charge_id = $1", row["charge_id"]
                )
        return len(due)


def parse_sandbox_notice(body: bytes, gateway: str) -> Notice | None:
    """A verified sandbox notice in our terms; None for a notice type we do not act on."""
    document = json.loads(body)
    data = document.get("data", {})
    kinds = {"ach.settled": NoticeKind.SETTLED, "ach.returned": NoticeKind.RETURNED}
    kind = kinds.get(document.get("type", ""))
    if kind is None:
        return None
    return Notice(
        source="sandbox",
        event_id=str(document["id"]),
        kind=kind,
        gateway=gateway,
        gateway_reference=str(data.get("charge_id", "")),
        idempotency_key=str(data.get("idempotency_key", "")),
        code=str(data.get("return_code", "")),
        message="ACH return" if kind is NoticeKind.RETURNED else "ACH settled",
    )
