"""Each gateway's own rate limit (`GATEWAY_RATE_LIMITS`), read once at start."""

from __future__ import annotations

from collections.abc import Iterable


class LimitError(ValueError):
    pass


def parse_rate_limits(entries: Iterable[str], known_gateways: Iterable[str]) -> dict[str, int]:
    """Entries look like `sandbox-card=200`: calls per second for all pods together, 0 for none."""
    gateways = set(known_gateways)
    limits: dict[str, int] = {}
    for entry in entries:
        name, _, value = entry.partition("=")
        gateway = name.strip()
        if not value.strip().isdecimal():
            raise LimitError(f"entry {entry!r} is not <gateway>=<calls per second>")
        if gateway not in gateways:
            raise LimitError(f"entry {entry!r} names unknown gateway {gateway!r}")
        if gateway in limits:
            raise LimitError(f"gateway {gateway!r} is limited twice")
        limits[gateway] = int(value)
    return limits
