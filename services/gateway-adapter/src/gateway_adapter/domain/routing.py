"""Which gateway, with which credentials, handles a merchant's payment method.

Routes are configuration (`GATEWAY_ROUTES`), read once at start. A credentials reference names a
secret held outside the database; the route never carries the secret itself.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from billing_common.payments import MethodType

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


@dataclass(frozen=True)
class Routes:
    """Routes beyond the defaults, as `GATEWAY_ROUTES` gives them: comma-separated entries like
    `merchant_1:CARD=stripe@eu_account` or `*:ACH=sandbox-ach`. The settings loader parses them, so
    a malformed entry stops the service at start, naming the variable."""

    entries: tuple[tuple[str, MethodType, Route], ...] = ()

    @classmethod
    def from_setting(cls, text: str) -> Routes:
        entries = []
        for entry in filter(None, (part.strip() for part in text.split(","))):
            try:
                who, target = entry.split("=", 1)
                merchant, method_name = who.rsplit(":", 1)
                gateway, _, credentials = target.partition("@")
                method = MethodType[method_name.strip().upper()]
            except (ValueError, KeyError) as error:
                raise RouteError(
                    f"route {entry!r} is not <merchant>:<METHOD>=<gateway>[@<credentials>]"
                ) from error
            entries.append((merchant.strip(), method, Route(gateway.strip(), credentials or "default")))
        return cls(tuple(entries))

    def setting_text(self) -> str:
        return ",".join(
            f"{merchant}:{method.name}={route.gateway}@{route.credentials_ref}"
            for merchant, method, route in self.entries
        )


class Router:
    def __init__(self, routes: Routes, known_gateways: Iterable[str]) -> None:
        """The defaults with `routes` over them; a route to a gateway we do not have is refused."""
        gateways = set(known_gateways)
        self._routes = {(ANY_MERCHANT, method): Route(name) for method, name in DEFAULT_GATEWAYS.items()}
        for merchant, method, route in routes.entries:
            if route.gateway not in gateways:
                raise RouteError(
                    f"a route of {merchant}:{method.value} names unknown gateway {route.gateway!r}"
                )
            self._routes[(merchant, method)] = route

    def route(self, merchant_id: str, method: MethodType) -> Route:
        return self._routes.get((merchant_id, method)) or self._routes[(ANY_MERCHANT, method)]
