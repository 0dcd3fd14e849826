"""Webhook signatures in Stripe's scheme: `t=<unix time>,v1=<hex HMAC-SHA256 of "t.payload">`.

More than one `v1` may be present and more than one secret may be configured, so a signing
secret can be rotated without refusing notices signed with the old one in the meantime.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence
from datetime import datetime, timedelta

DEFAULT_TOLERANCE = timedelta(seconds=300)


class SignatureError(ValueError):
    pass


def sign(payload: bytes, secret: str, at: datetime) -> str:
    timestamp = int(at.timestamp())
    return f"t={timestamp},v1={_digest(payload, secret, timestamp)}"


def verify(
    payload: bytes,
    header: str,
    secrets: Sequence[str],
    now: datetime,
    tolerance: timedelta = DEFAULT_TOLERANCE,
) -> None:
    if not secrets:
        raise SignatureError("no signing secret is configured")
    timestamp, signatures = _parse(header)
    if abs(now.timestamp() - timestamp) > tolerance.total_seconds():
        raise SignatureError("timestamp outside the tolerance")
    expected = {_digest(payload, secret, timestamp) for secret in secrets}
    if not any(hmac.compare_digest(candidate, wanted) for candidate in signatures for wanted in expected):
        raise SignatureError("no signature matches")


def _parse(header: str) -> tuple[int, list[str]]:
    timestamp: int | None = None
    signatures: list[str] = []
    for item in header.split(","):
        name, _, value = item.strip().partition("=")
        if name == "t" and value.isdigit():
            timestamp = int(value)
        elif name == "v1" and value:
            signatures.append(value)
    if timestamp is None or not signatures:
        raise SignatureError("malformed signature header")
    return timestamp, signatures


def _digest(payload: bytes, secret: str, timestamp: int) -> str:
    return hmac.new(secret.encode(), f"{timestamp}.".encode() + payload, hashlib.sha256).hexdigest()
