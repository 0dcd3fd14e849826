"""Which gateway, with which credentials, handles a merchant's payment method.

Routes are configuration (`GATEWAY_ROUTES`), read once at start. A credentials reference names a
secret held outside the database; the route never carries the secret itself.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from gateway_adapter.domain.payments import MethodType

ANY_MERCHANT = "*"
DEFAULT_GATEWAYS: Mapping[MethodType, str] = {
    MethodType.CARD: "sandbox-card",
    MethodType.ACH: "sandbox-ach",
    MethodType.STRIPE: "stripe",
}


@dataclass(frozen=True)
class Route:
    gateway: str
    credentials_ref: str = "default"


class RouteError(ValueError):
    pass


class Router:
    def __init__(self, routes: Mapping[tuple[str, MethodType], Route]) -> None:
        self._routes = dict(routes)

    @classmethod
    def parse(cls, entries: Iterable[str], known_gateways: Iterable[str]) -> Router:
        """Entries look like `merchant_1:CARD=stripe@eu_account` or `*:ACH=sandbox-ach`."""
        gateways = set(known_gateways)
        routes = {(ANY_MERCHANT, method): Route(name) for method, name in DEFAULT_GATEWAYS.items()}
        for entry in entries:
            try:
                who, target = entry.split("=", 1)
                merchant, method_name = who.rsplit(":", 1)
                gateway, _, credentials = target.partition("@")
                method = MethodType(method_name.strip().upper())
            except ValueError as error:
                raise RouteError(
                    f"route {entry!r} is not <merchant>:<METHOD>=<gateway>[@<credentials>]"
                ) from error
            if gateway not in gateways:
                raise RouteError(f"route {entry!r} names unknown gateway {gateway!r}")
            routes[(merchant.strip(), method)] = Route(gateway, credentials or "default")
        return cls(routes)

    def route(self, merchant_id: str, method: MethodType) -> Route:
        return self._routes.get((merchant_id, method)) or self._routes[(ANY_MERCHANT, method)]
