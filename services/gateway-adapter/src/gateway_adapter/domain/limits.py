"""Each gateway's own rate limit (`GATEWAY_RATE_LIMITS`), checked once at start."""

from __future__ import annotations

from collections.abc import Iterable, Mapping


class LimitError(ValueError):
    pass


def check_rate_limits(limits: Mapping[str, int], known_gateways: Iterable[str]) -> None:
    """Limits are calls per second for all pods together, 0 for none, each of a gateway we know."""
    gateways = set(known_gateways)
    for gateway, per_second in limits.items():
        if gateway not in gateways:
            raise LimitError(f"unknown gateway {gateway!r}")
        if per_second < 0:
            raise LimitError(f"{gateway}={per_second} is below 0")
